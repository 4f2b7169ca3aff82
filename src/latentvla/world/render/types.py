"""What the sensor renderers consume: a frame's world content already expressed in the ego frame.

The simulator builds one ``RenderScene`` per sensor frame (ground layers from the map, boxes for every object);
the camera rasterizer and the LiDAR ray caster both read it, so the two sensors always agree geometrically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Box kinds the renderers know how to draw.
BOX_KINDS = ("vehicle", "pedestrian", "bicycle", "traffic_cone", "barrier", "pole", "traffic_light")


@dataclass
class GroundLayer:
    """Flat polygons on the ground plane z=0, drawn in list order (later layers on top)."""

    name: str
    color: tuple[int, int, int]  # RGB
    rings: list[np.ndarray]  # each (N, 2) float, ego frame, exterior ring
    lidar_intensity: float = 0.1


@dataclass
class RenderBox:
    """An oriented 3-D box standing on the ground (z = bottom face), ego frame.

    ``brake_on`` lights the two brake lamps on the rear face of vehicles (camera only; LiDAR cannot see it).
    ``light_state`` (traffic_light heads only) lights one of three lamps on the +x face (the face looking along
    the box heading): red top, yellow middle, green bottom.
    """

    x: float
    y: float
    z: float  # bottom of the box
    length: float
    width: float
    height: float
    heading: float
    kind: str
    color: tuple[int, int, int]
    brake_on: bool = False
    light_state: str | None = None
    lidar_intensity: float = 0.3


@dataclass
class RenderScene:
    ground: list[GroundLayer] = field(default_factory=list)
    boxes: list[RenderBox] = field(default_factory=list)
