"""msaf-bag: segmenting recorded drives (rosbag2, mcap or sqlite3) offline, without rclpy.

- :mod:`~msaf_ros.bag.io`       reading bags: open, iterate, decode images and labels;
- :mod:`~msaf_ros.bag.plan`     the checks, the output topic names and pass 1 (frame order);
- :mod:`~msaf_ros.bag.reorder`  frames of a topic in stamp order while the bag is read once;
- :mod:`~msaf_ros.bag.scoring`  predictions against ground-truth label images (mIoU);
- :mod:`~msaf_ros.bag.output`   the output bag, built aside and moved in place when complete;
- :mod:`~msaf_ros.bag.segment`  :func:`segment_bag`, which runs the above (pass 2);
- :mod:`~msaf_ros.bag.result`   what it returns, and the printed summary;
- :mod:`~msaf_ros.bag.cli`      the ``msaf-bag`` command.

Reference: docs/bag.md.
"""
