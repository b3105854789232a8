"""``occle-play``: play ROS 1 (.bag) and ROS 2 (sqlite3 / mcap) bags into live topics through rclpy.

Bags are read with ``rosbags.highlevel.AnyReader`` (no ROS bag tooling needed). Each recorded topic is
published on the same name (``--remap from:=to`` renames) with the message class of the installed ROS
packages:

- ROS 2 bags whose recorded type has the same layout as the installed one are re-published as the raw CDR
  bytes (``publisher.publish(bytes)``: no deserialisation, the fastest path);
- ROS 1 bags, and ROS 2 bags recorded with another layout of a type (another distro), are deserialised by
  rosbags and converted field by field (by name; ROS 1 upper-case names such as CameraInfo ``K`` map to
  ``k``, ``header.seq`` is dropped, missing fields keep their defaults).

Messages go out at the recorded pace times ``--rate``, optionally from ``--start-offset`` seconds, optionally
looping, with ``/clock`` (rosgraph_msgs/Clock) when ``--clock`` is set. A message type that is not installed
(e.g. tf2_msgs in a plain pip environment) is skipped with one warning per type.
"""

from __future__ import annotations

import argparse
import array
import importlib
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: ROS 1 type names whose ROS 2 counterpart has another name.
ROS1_TYPE_RENAMES = {"tf/msg/tfMessage": "tf2_msgs/msg/TFMessage"}

#: rosidl basic type -> (numpy dtype, array.array typecode or None for fixed arrays / lists)
_BASIC = {
    "boolean": (np.bool_, None),
    "octet": (np.uint8, "B"),
    "char": (np.uint8, "B"),
    "uint8": (np.uint8, "B"),
    "int8": (np.int8, "b"),
    "uint16": (np.uint16, "H"),
    "int16": (np.int16, "h"),
    "uint32": (np.uint32, "I"),
    "int32": (np.int32, "i"),
    "uint64": (np.uint64, "Q"),
    "int64": (np.int64, "q"),
    "float": (np.float32, "f"),
    "double": (np.float64, "d"),
    "float32": (np.float32, "f"),
    "float64": (np.float64, "d"),
}


class BagError(RuntimeError):
    """A bag that cannot be opened or read (the message names the file)."""


def ros2_message_class(msgtype: str) -> type | None:
    """The installed rclpy message class of ``pkg/msg/Type`` (or ``pkg/Type``), or None when not importable."""
    msgtype = ROS1_TYPE_RENAMES.get(msgtype, msgtype)
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        return None
    pkg, kind, name = parts
    try:
        module = importlib.import_module(f"{pkg}.{kind}")
    except ImportError:
        return None
    cls = getattr(module, name, None)
    return cls if isinstance(cls, type) and hasattr(cls, "get_fields_and_field_types") else None


def _nested_class(t: Any) -> type:
    cls = ros2_message_class("/".join([*t.namespaces, t.name]))
    if cls is None:
        raise TypeError(f"message type {'/'.join([*t.namespaces, t.name])} is not installed")
    return cls


def _source_attr(obj: Any, name: str) -> Any:
    if hasattr(obj, name):
        return getattr(obj, name)
    upper = name.upper()  # ROS 1 CameraInfo D, K, R, P
    if hasattr(obj, upper):
        return getattr(obj, upper)
    raise AttributeError(name)


def to_ros2_message(obj: Any, cls: type) -> Any:
    """Convert a rosbags message object (any ROS version) into an instance of the rclpy class ``cls``.

    Fields are matched by name (falling back to the upper-case ROS 1 name); fields missing in ``obj`` keep
    their defaults, extra fields of ``obj`` (e.g. ``header.seq``) are ignored. Numeric arrays are copied as
    whole buffers, not element by element.
    """
    msg = cls()
    for name, slot in zip(cls.get_fields_and_field_types(), cls.SLOT_TYPES):
        try:
            value = _source_attr(obj, name)
        except AttributeError:
            continue
        setattr(msg, name, _convert_value(value, slot))
    return msg


def _convert_value(value: Any, slot: Any) -> Any:
    kind = type(slot).__name__
    if kind == "NamespacedType":
        return to_ros2_message(value, _nested_class(slot))
    if kind in ("Array", "UnboundedSequence", "BoundedSequence"):
        inner = slot.value_type
        inner_kind = type(inner).__name__
        if inner_kind == "NamespacedType":
            cls = _nested_class(inner)
            return [to_ros2_message(v, cls) for v in value]
        if inner_kind == "BasicType" and inner.typename in _BASIC:
            dtype, code = _BASIC[inner.typename]
            arr = np.asarray(value, dtype=dtype).reshape(-1)
            if kind == "Array":
                return arr.tolist() if dtype is np.bool_ else arr
            if code is None:
                return arr.tolist()
            out = array.array(code)
            out.frombytes(np.ascontiguousarray(arr).tobytes())
            return out
        return [str(v) for v in value]  # sequences of strings
    if kind == "BasicType":
        if slot.typename == "boolean":
            return bool(value)
        if slot.typename in ("float", "double", "float32", "float64"):
            return float(value)
        if slot.typename in ("char", "octet", "byte"):
            return bytes([int(value)]) if slot.typename == "octet" else int(value)
        return int(value)
    return str(value)  # strings


@dataclass
class _Topic:
    publisher: Any
    cls: type
    raw: bool | None  # None: not decided yet (ROS 2 bags decide on the first message)
    count: int = 0


@dataclass
class PlayStats:
    """What a playback did."""

    published: dict[str, int] = field(default_factory=dict)
    skipped_types: dict[str, str] = field(default_factory=dict)  # topic -> type
    loops: int = 0


class BagPlayer:
    """Publish the messages of one bag through ``node``.

    Args:
        node: an rclpy node that owns the publishers.
        bag: ROS 2 bag folder (or its .mcap/.db3 file), or a ROS 1 ``.bag`` file.
        rate: playback speed factor (> 0).
        loop: start again at the end.
        start_offset: seconds of the bag to skip at the start.
        remap: topic renames ``{recorded: published}``.
        clock: publish ``/clock`` with each message's recorded time.
        topics: play only these recorded topics (default all).
        reliable_qos_depth: history depth of the (reliable) publishers.
    """

    def __init__(
        self,
        node: Any,
        bag: str | Path,
        rate: float = 1.0,
        loop: bool = False,
        start_offset: float = 0.0,
        remap: dict[str, str] | None = None,
        clock: bool = False,
        topics: Sequence[str] | None = None,
        reliable_qos_depth: int = 10,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if start_offset < 0:
            raise ValueError(f"start_offset must be >= 0 seconds, got {start_offset}")
        self.node = node
        self.bag = bag_path(Path(bag))
        self.rate = float(rate)
        self.loop = loop
        self.start_offset = float(start_offset)
        self.remap = {_abs(k): _abs(v) for k, v in (remap or {}).items()}
        self.clock = clock
        self.only = {_abs(t) for t in topics} if topics else None
        self.depth = int(reliable_qos_depth)
        self.stats = PlayStats()
        self._warned: set[str] = set()
        self._reader: Any = None
        self._pubs: dict[int, _Topic] = {}
        self._clock_pub: Any = None
        self.unmatched: list[str] = []  # topics still without a subscription after wait_for_subscribers

    def _publisher(self, topic: str, cls: type) -> Any:
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        durable = topic == "/tf_static"
        qos = QoSProfile(
            depth=100 if durable else self.depth,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if durable else DurabilityPolicy.VOLATILE,
        )
        return self.node.create_publisher(cls, topic, qos)

    def open(self) -> None:
        """Open the bag and create one publisher per playable topic (idempotent).

        Raises:
            BagError: naming the file when it cannot be opened.
        """
        if self._reader is not None:
            return
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        try:
            reader = AnyReader([self.bag], default_typestore=get_typestore(Stores.LATEST))
            reader.open()
        except Exception as exc:  # rosbags raises several unrelated types for broken files
            raise BagError(f"cannot open bag {self.bag}: {exc}") from exc
        pubs: dict[int, _Topic] = {}
        for c in reader.connections:
            if self.only is not None and c.topic not in self.only:
                continue
            cls = ros2_message_class(c.msgtype)
            if cls is None:
                self.stats.skipped_types[c.topic] = c.msgtype
                if c.msgtype not in self._warned:
                    self._warned.add(c.msgtype)
                    self.node.get_logger().warning(
                        f"skipping topic {c.topic}: message type {c.msgtype} is not installed here"
                    )
                continue
            topic = self.remap.get(c.topic, c.topic)
            same = next((t for t in pubs.values() if t.publisher.topic_name == topic), None)
            pub = same.publisher if same is not None else self._publisher(topic, cls)
            pubs[c.id] = _Topic(pub, cls, None if reader.is2 else False)
        if self.clock:
            from rosgraph_msgs.msg import Clock

            self._clock_pub = self.node.create_publisher(Clock, "/clock", 10)
        self._reader, self._pubs = reader, pubs

    def wait_for_subscribers(
        self, timeout: float, stop: threading.Event | None = None, topics: Sequence[str] | None = None
    ) -> bool:
        """Wait until the publishers of ``topics`` (published names; default every data topic, ``/tf*`` excepted)
        are each matched with a subscription, or ``timeout`` s; True when all are.

        Matching is checked on the player's own publishers (``get_subscription_count``), so with reliable QoS the
        first message is not lost to discovery. The topics still unmatched are left in :attr:`unmatched`.

        Raises:
            ValueError: a topic of ``topics`` that this bag does not publish (the played topics listed).
        """
        self.open()
        by_name = {t.publisher.topic_name: t.publisher for t in self._pubs.values()}
        if topics is None:
            wanted = sorted(n for n in by_name if not n.startswith("/tf"))
        else:
            wanted = [_abs(t) for t in topics]
            unknown = [t for t in wanted if t not in by_name]
            if unknown:
                raise ValueError(f"--wait-topics {unknown} are not played from {self.bag} (it has {sorted(by_name)})")
        deadline = time.monotonic() + timeout
        while True:
            self.unmatched = [n for n in wanted if by_name[n].get_subscription_count() == 0]
            if not self.unmatched:
                return True
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return False
            time.sleep(0.05)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until reliable subscribers acknowledged everything published (before the process exits)."""
        from rclpy.duration import Duration

        deadline = time.monotonic() + timeout
        ok = True
        for pub in {id(t.publisher): t.publisher for t in self._pubs.values()}.values():
            left = max(0.0, deadline - time.monotonic())
            ok = pub.wait_for_all_acked(Duration(seconds=left)) and ok
        return ok

    def play(self, stop: threading.Event | None = None) -> PlayStats:
        """Play the bag (blocking) until its end (or forever with ``loop``) or until ``stop`` is set.

        Raises:
            BagError: naming the file when it cannot be opened or read.
        """
        stop = stop or threading.Event()
        self.open()
        reader, pubs = self._reader, self._pubs
        try:
            conns = [c for c in reader.connections if c.id in pubs]
            start = reader.start_time + int(self.start_offset * 1e9)
            while not stop.is_set():
                self._play_once(reader, conns, pubs, start, self._clock_pub, stop)
                if not self.loop or stop.is_set():
                    break
                self.stats.loops += 1
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"error while reading bag {self.bag}: {exc}") from exc
        finally:
            reader.close()
            self._reader = None
        return self.stats

    def _play_once(self, reader, conns, pubs, start: int, clock_pub, stop: threading.Event) -> None:
        from rclpy.serialization import deserialize_message

        wall0 = time.monotonic()
        for conn, stamp, raw in reader.messages(connections=conns, start=start):
            due = wall0 + (stamp - start) / 1e9 / self.rate
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            if stop.is_set():
                return
            t = pubs[conn.id]
            if clock_pub is not None:
                from builtin_interfaces.msg import Time
                from rosgraph_msgs.msg import Clock

                clock_pub.publish(Clock(clock=Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000)))
            if t.raw is None:  # ROS 2 bag: is the recorded layout the installed one?
                converted = to_ros2_message(reader.deserialize(raw, conn.msgtype), t.cls)
                try:
                    t.raw = deserialize_message(bytes(raw), t.cls) == converted
                except Exception:  # a layout rclpy cannot even parse
                    t.raw = False
                if not t.raw:
                    self.node.get_logger().info(
                        f"topic {conn.topic}: recorded {conn.msgtype} differs from the installed type; converting"
                    )
                t.publisher.publish(converted)
            elif t.raw:
                t.publisher.publish(bytes(raw))
            else:
                t.publisher.publish(to_ros2_message(reader.deserialize(raw, conn.msgtype), t.cls))
            t.count += 1
            self.stats.published[conn.topic] = self.stats.published.get(conn.topic, 0) + 1


def _abs(topic: str) -> str:
    return topic if topic.startswith("/") else "/" + topic


def bag_path(path: Path) -> Path:
    """A ROS 2 bag is its folder; accept the storage file inside it too."""
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    if path.is_file() and path.suffix in (".mcap", ".db3") and (path.parent / "metadata.yaml").is_file():
        return path.parent
    return path


def parse_remaps(items: Sequence[str]) -> dict[str, str]:
    """``["from:=to", ...]`` -> ``{from: to}``; raises ValueError naming a malformed item."""
    out = {}
    for item in items:
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise ValueError(f"--remap expects FROM:=TO, got {item!r}")
        out[src] = dst
    return out


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``occle-play``."""
    p = argparse.ArgumentParser(prog="occle-play", description="Play a ROS 1 or ROS 2 bag into live topics.")
    p.add_argument("bag", help="ROS 2 bag folder (sqlite3 or mcap) or ROS 1 .bag file")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default 1.0)")
    p.add_argument("--loop", action="store_true", help="play again from the start at the end")
    p.add_argument("--start-offset", type=float, default=0.0, help="skip the first S seconds of the bag")
    p.add_argument("--remap", action="append", default=[], metavar="FROM:=TO", help="rename a topic (repeatable)")
    p.add_argument("--clock", action="store_true", help="publish /clock with the recorded time")
    p.add_argument("--topics", nargs="+", default=None, help="play only these recorded topics")
    p.add_argument(
        "--wait-subscribers", type=float, default=0.0, help="before the first message, wait up to S seconds until "
        "every played topic (or each of --wait-topics) has a matched subscription",
    )  # fmt: skip
    p.add_argument("--wait-topics", nargs="+", default=None, help="published topics to wait for (default: all)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``occle-play``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = []
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], argv[i:]
    args = build_parser().parse_args(argv)
    try:
        remap = parse_remaps(args.remap)
        if not args.rate > 0:
            raise ValueError(f"--rate must be > 0, got {args.rate}")
        bag = bag_path(Path(args.bag))
    except (ValueError, BagError) as exc:
        print(f"occle-play: error: {exc}", file=sys.stderr)
        return 2

    import rclpy
    from rclpy.node import Node

    from occle_ros.dds import apply_large_data_profile

    apply_large_data_profile()  # before rclpy.init: full-size camera images over Fast DDS (unless configured)
    rclpy.init(args=["occle-play", *ros_args])
    node = Node("occle_player")
    stop = threading.Event()

    def _stop(*_: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        player = BagPlayer(node, bag, args.rate, args.loop, args.start_offset, remap, args.clock, args.topics)
        if args.wait_subscribers > 0:
            if player.wait_for_subscribers(args.wait_subscribers, stop, args.wait_topics):
                node.get_logger().info("every waited-for topic has a subscriber; playing")
            elif not stop.is_set():
                node.get_logger().warning(
                    f"no subscriber on {', '.join(player.unmatched)} after {args.wait_subscribers} s; playing anyway "
                    f"(their first messages may be lost)"
                )
        stats = player.play(stop)
        if not stop.is_set():
            player.flush(timeout=5.0)
        total = sum(stats.published.values())
        node.get_logger().info(f"played {total} messages from {bag} ({stats.loops} loops)")
    except (BagError, ValueError) as exc:
        print(f"occle-play: error: {exc}", file=sys.stderr)
        status = 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return status


if __name__ == "__main__":
    sys.exit(main())
