"""Programs on top of msaf_ros, and what they share.

- :mod:`~msaf_ros.tools.demo`          ``msaf-demo``: the sample drive through msaf-bag, a
  picture, frames per second and mIoU;
- :mod:`~msaf_ros.tools.sample_drive`  the shipped sample drive (and how to rebuild it);
- :mod:`~msaf_ros.tools.bench_node`    ``msaf-bench-node``: the node end to end at given rates;
- :mod:`~msaf_ros.tools.soak`          ``msaf-soak``: a long run at camera rate, then a signal;
- :mod:`~msaf_ros.tools.harness`       the node benchmarks' harness, frames and options;
- :mod:`~msaf_ros.tools.report`        what they record and the figures computed from it;
- :mod:`~msaf_ros.tools.node_process`  segment_node as a child process, and a probe node.

Nothing in the node (:mod:`msaf_ros.segment_node`) or in msaf-bag imports this package.
"""
