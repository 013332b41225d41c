"""segment_lifecycle_node: segment_node as a managed (lifecycle) node, for systems whose
lifecycle manager (Nav2's, Autoware's, ``ros2 lifecycle set``) brings nodes up in order.

The node starts *unconfigured* with its parameters declared and checked (a bad value stops
it, exit code 1, as segment_node). Its transitions (lifecycle_msgs services
``<node>/change_state``, ``get_state``, ...):

- configure: load the model on the device, create the publishers and publish the latched
  class info (a model that cannot load: the transition fails, the error is logged in one
  line, the node stays unconfigured);
- activate: start the worker, subscribe the input, start /diagnostics and the log summary;
- deactivate: unsubscribe, stop the worker and the timers (publishers stay);
- cleanup: destroy the publishers and free the model (and its GPU memory);
- shutdown: all of the above that applies.

Everything else is segment_node's (:class:`msaf_ros.segment_node.SegmentNode`).
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, List, Optional

from .errors import MsafRosError, one_line
from .params import NODE_NAME
from .segment_node import SegmentNode
from .segment_node import main as node_main


def close_input(app: SegmentNode, timeout: float = 1.0) -> bool:
    """Undo ``open_input``: no timers, no subscription, the worker stopped (True when it
    ended within ``timeout`` seconds)."""
    for timer in (app.diag_timer, app.log_timer):
        if timer is not None:
            app.node.destroy_timer(timer)
    if app.sub is not None:
        app.node.destroy_subscription(app.sub)
    app.diag_timer = app.log_timer = app.sub = None
    ended = app.stop(timeout)
    app.worker = None
    return ended


def close_outputs(app: SegmentNode) -> None:
    """Undo ``open_outputs``."""
    for pub in app.pubs:
        app.node.destroy_publisher(pub)
    app.pubs = []


def release_model(app: SegmentNode) -> None:
    """Drop the model, and its memory on a GPU."""
    on_gpu = app.seg is not None and str(getattr(app.seg, "device", "cpu")) != "cpu"
    app.seg = None
    if on_gpu:
        import torch  # noqa: PLC0415
        torch.cuda.empty_cache()


def make_node(**node_kw: Any) -> Any:
    """The rclpy LifecycleNode ``segment_node`` with its transitions wired to a SegmentNode
    (available as ``.app``)."""
    from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn  # noqa: PLC0415
    ok, failed = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE

    class SegmentLifecycleNode(LifecycleNode):
        def __init__(self) -> None:
            super().__init__(NODE_NAME, **node_kw)
            self.app = SegmentNode(node=self)           # declares and checks the parameters
            self.active = False

        def on_configure(self, state: Any) -> Any:
            try:
                self.app.load_model()
                self.app.open_outputs()
            except MsafRosError as e:
                self.get_logger().error(f"configure failed: {one_line(e)}")
                close_outputs(self.app)
                release_model(self.app)
                return failed
            return ok

        def on_activate(self, state: Any) -> Any:
            self.app.open_input()
            self.active = True
            return super().on_activate(state)

        def on_deactivate(self, state: Any) -> Any:
            close_input(self.app)
            self.active = False
            self.get_logger().info("deactivated: input unsubscribed, worker stopped")
            return super().on_deactivate(state)

        def on_cleanup(self, state: Any) -> Any:
            close_outputs(self.app)
            release_model(self.app)
            self.get_logger().info("cleaned up: publishers destroyed, model freed")
            return ok

        def on_shutdown(self, state: Any) -> Any:
            if self.active:
                close_input(self.app)
            close_outputs(self.app)
            release_model(self.app)
            return ok

    return SegmentLifecycleNode()


def _build(stop: threading.Event, keep: Callable[[Any], None]) -> None:
    node = make_node()
    keep(node.app)
    node.app.log.info("unconfigured: waiting for configure (lifecycle_msgs ChangeState)")


def main(args: Optional[List[str]] = None, fast_exit: bool = True) -> int:
    """Console script ``segment_lifecycle_node`` (same arguments and exit codes as
    ``segment_node``)."""
    return node_main(args, fast_exit=fast_exit, build=_build)


if __name__ == "__main__":
    sys.exit(main())
