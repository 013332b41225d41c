"""Launch msaf_ros segment_node, and RViz2 showing the input, the overlay and the colour mask.

    ros2 launch msaf_ros segment.launch.py image_topic:=/camera/image_raw
    ros2 launch msaf_ros segment.launch.py image_topic:=/cam_front/image_raw \
        namespace:=front checkpoint:=/models/msaf_r18_camvid.pt device:=cuda rviz:=true

Arguments: image_topic, checkpoint, device, namespace, params_file, use_sim_time, rviz,
lifecycle. ``checkpoint`` and ``device`` override params_file when not empty.

- params_file is read here with the rules rclpy applies to a ``--params-file``: every entry
  whose node name matches this node's full name (``/**``, ``/**/segment_node``,
  ``/*/segment_node``, ``/front/segment_node``, ``segment_node`` = ``/segment_node``) is
  applied in file order, a later entry overriding an earlier one. The launch arguments come
  last.
- segment_node is required: when it exits, the launch ends; when it fails (exit code not 0,
  e.g. a bad checkpoint) ``ros2 launch`` exits with code 1.
- ``rviz:=true`` where rviz2 is not installed stops before anything is started.
- ``lifecycle:=true`` runs the managed node (``segment_lifecycle_node``): it waits
  unconfigured until a lifecycle manager (or the lifecycle_msgs services) configures and
  activates it.

Works on Humble, Jazzy and Kilted (launch, launch_ros.actions.Node only; the share
directory comes from msaf_ros.resources, which asks the ament index first).
"""

import os
import re
import tempfile
import zlib

import yaml
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, EmitEvent, OpaqueFunction,
                            RegisterEventHandler)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from msaf_ros.resources import share_dir

PACKAGE = 'msaf_ros'
EXECUTABLE = 'segment_node'
LIFECYCLE_EXECUTABLE = 'segment_lifecycle_node'
NODE_NAME = 'segment_node'
PARAMS_FILE = 'config/msaf.yaml'
RVIZ_FILE = 'config/msaf.rviz'
# Launch arguments passed on as node parameters (when not empty).
PARAMETER_ARGUMENTS = ('checkpoint', 'device')
# Topics the RViz config shows, as written in config/msaf.rviz (un-namespaced).
RVIZ_TOPICS = {'input': '/camera/image_raw', 'overlay': '/overlay', 'color_mask': '/color_mask'}
TRUE = ('true', '1', 'yes', 'on')


def _flatten(values, prefix=''):
    """Nested parameter dicts as rcl reads them: ``{'a': {'b': 1}}`` -> ``{'a.b': 1}``."""
    out = {}
    for key, value in (values or {}).items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(_flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def _entries(data, prefix=''):
    """(node name, parameters) of a params file in file order; namespaces may be nested
    (``front: {segment_node: {ros__parameters: ...}}``) as rcl allows."""
    for key, entry in (data or {}).items():
        if not isinstance(entry, dict):
            continue
        name = f'{prefix}/{str(key).strip().strip("/")}'
        if 'ros__parameters' in entry:
            yield name, _flatten(entry['ros__parameters'])
        else:
            yield from _entries(entry, name)


def name_matches(pattern, fqn):
    """rcl's node-name matching: ``/**`` any number of namespace tokens, ``/*`` one."""
    rx = re.escape(pattern).replace(r'/\*\*', r'(/[^/]+)*').replace(r'/\*', r'/[^/]+')
    return re.fullmatch(rx, fqn) is not None


def node_parameters(params_file, namespace=''):
    """The parameters a params file gives this launch's node, ``/<namespace>/segment_node``:
    the entries whose name matches, in file order (a later one overrides), as rclpy applies
    a ``--params-file``. Nested parameter groups come back as dotted names."""
    with open(params_file) as f:
        data = yaml.safe_load(f) or {}
    ns = namespace.strip('/')
    fqn = f'/{ns}/{NODE_NAME}' if ns else f'/{NODE_NAME}'
    params = {}
    for name, values in _entries(data):
        if name_matches(name, fqn):
            params.update(values)
    return params


def rviz_installed():
    """True when the ament index knows the rviz2 package (a ROS 2 desktop install)."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    try:
        get_package_prefix('rviz2')
        return True
    except PackageNotFoundError:
        return False


def rviz_config(namespace, image_topic):
    """config/msaf.rviz with its topics moved to this launch's names (a file in the temp
    directory, one per user and set of names)."""
    with open(os.path.join(str(share_dir()), RVIZ_FILE)) as f:
        text = f.read()
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
    image = image_topic if image_topic.startswith('/') else f'{ns}/{image_topic}'
    new = {'input': image, 'overlay': f'{ns}/overlay', 'color_mask': f'{ns}/color_mask'}
    for key, old in RVIZ_TOPICS.items():
        text = text.replace(f'Value: {old}\n', f'Value: {new[key]}\n')
    # one file per user and set of topic names, rewritten by each launch: no pile-up in /tmp
    tag = zlib.crc32(f'{os.getuid() if hasattr(os, "getuid") else 0}:{image}:{ns}'.encode())
    path = os.path.join(tempfile.gettempdir(), f'msaf_ros_{tag:08x}.rviz')
    tmp = f'{path}.{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)           # atomic: a concurrent launch never reads half a file
    return path


def end_with_node(event, context):
    """segment_node exited: the launch ends, and fails (exit code 1) when the node failed."""
    if event.returncode != 0 and not context.is_shutdown:
        raise RuntimeError(f'{event.action.name} failed (exit code {event.returncode}); '
                           f'its error is above')
    return [EmitEvent(event=Shutdown(reason=f'{event.action.name} exited'))]


def launch_setup(context, *args, **kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    rviz = arg('rviz').lower() in TRUE
    if rviz and not rviz_installed():       # checked before any process is started
        raise RuntimeError("rviz:=true but the package 'rviz2' is not installed: install it "
                           '(apt install ros-$ROS_DISTRO-rviz2) or launch with rviz:=false')
    namespace = arg('namespace').strip('/')
    params = node_parameters(arg('params_file'), namespace)
    for name in PARAMETER_ARGUMENTS:
        if arg(name) != '':
            params[name] = arg(name)
    use_sim_time = arg('use_sim_time').lower() in TRUE
    params['use_sim_time'] = use_sim_time
    image_topic = arg('image_topic')
    ns_kw = {'namespace': namespace} if namespace else {}
    lifecycle = arg('lifecycle').lower() in TRUE
    node = Node(
        package=PACKAGE,
        executable=LIFECYCLE_EXECUTABLE if lifecycle else EXECUTABLE,
        name=NODE_NAME,
        **ns_kw,
        parameters=[params],
        remappings=[('image', image_topic)],
        output='screen',
        # no emulate_tty: a terminal would make rcutils colour the log lines, and the ANSI
        # codes would land in captured logs; unbuffered Python keeps the lines in order
        additional_env={'PYTHONUNBUFFERED': '1'},
    )
    actions = [node, RegisterEventHandler(OnProcessExit(target_action=node,
                                                        on_exit=end_with_node))]
    if rviz:
        actions.append(Node(
            package='rviz2',
            executable='rviz2',
            name='rviz2',
            **ns_kw,
            arguments=['-d', rviz_config(namespace, image_topic)],
            parameters=[{'use_sim_time': use_sim_time}],
            output='screen',
        ))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('image_topic', default_value='/camera/image_raw',
                              description='Input sensor_msgs/Image topic (the node '
                                          'subscribes <image_topic>/compressed with '
                                          'input_transport: compressed)'),
        DeclareLaunchArgument('checkpoint', default_value='',
                              description="msaf checkpoint (.pt); '' = params_file's value "
                                          '(there: the bundled model)'),
        DeclareLaunchArgument('device', default_value='',
                              description="auto, cpu, cuda or cuda:N; '' = params_file's "
                                          'value'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of the node and its output topics'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(str(share_dir()), PARAMS_FILE),
                              description='YAML parameters of segment_node'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use /clock (true when playing a bag with --clock)'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Start RViz2 with config/msaf.rviz'),
        DeclareLaunchArgument('lifecycle', default_value='false',
                              description='Run the managed (lifecycle) node: it waits '
                                          'unconfigured for configure and activate'),
        OpaqueFunction(function=launch_setup),
    ])
