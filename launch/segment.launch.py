"""Launch msaf_ros segment_node, and RViz2 showing the input, the overlay and the colour mask.

    ros2 launch msaf_ros segment.launch.py image_topic:=/camera/image_raw
    ros2 launch msaf_ros segment.launch.py image_topic:=/cam_front/image_raw \
        namespace:=front checkpoint:=/models/msaf_r18_camvid.pt device:=cuda rviz:=true

Arguments: image_topic, checkpoint, device, namespace, params_file, use_sim_time, rviz.
``checkpoint`` and ``device`` override params_file when not empty. Works on Humble, Jazzy
and Kilted (launch, launch_ros.actions.Node only; the share directory comes from
msaf_ros.resources, which asks the ament index first).
"""

import os
import tempfile
import zlib

import yaml
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from msaf_ros.resources import share_dir

PACKAGE = 'msaf_ros'
EXECUTABLE = 'segment_node'
NODE_NAME = 'segment_node'
PARAMS_FILE = 'config/msaf.yaml'
RVIZ_FILE = 'config/msaf.rviz'
# Launch arguments passed on as node parameters (when not empty).
PARAMETER_ARGUMENTS = ('checkpoint', 'device')
# Topics the RViz config shows, as written in config/msaf.rviz (un-namespaced).
RVIZ_TOPICS = {'input': '/camera/image_raw', 'overlay': '/overlay', 'color_mask': '/color_mask'}


def node_parameters(params_file, namespace=''):
    """The parameters a params file gives this launch's node, ``/<namespace>/segment_node``,
    merged as ROS 2 would apply them: wildcard entries (``/**``, ``/**/segment_node``) first,
    then the entry naming the node exactly (``segment_node``/``/segment_node`` without a
    namespace, ``/<namespace>/segment_node`` with one), which wins. Entries for other
    namespaces are ignored. Read here, not passed as a file, so that the node finds them
    under any namespace."""
    with open(params_file) as f:
        data = yaml.safe_load(f) or {}
    ns = namespace.strip('/')
    full = f'/{ns}/{NODE_NAME}' if ns else f'/{NODE_NAME}'
    wildcard, exact = {}, {}
    for key, entry in data.items():
        key = '/' + str(key).strip().lstrip('/')
        values = (entry or {}).get('ros__parameters') or {}
        if key in ('/**', f'/**/{NODE_NAME}'):
            wildcard.update(values)
        elif key == full:
            exact.update(values)
    return {**wildcard, **exact}


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


def launch_setup(context, *args, **kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    params = node_parameters(arg('params_file'), arg('namespace'))
    for name in PARAMETER_ARGUMENTS:
        if arg(name) != '':
            params[name] = arg(name)
    use_sim_time = arg('use_sim_time').lower() in ('true', '1', 'yes', 'on')
    params['use_sim_time'] = use_sim_time
    namespace = arg('namespace').strip('/')
    image_topic = arg('image_topic')
    ns_kw = {'namespace': namespace} if namespace else {}
    actions = [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=NODE_NAME,
            **ns_kw,
            parameters=[params],
            remappings=[('image', image_topic)],
            output='screen',
            emulate_tty=True,
        )
    ]
    if arg('rviz').lower() in ('true', '1', 'yes', 'on'):
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
        OpaqueFunction(function=launch_setup),
    ])
