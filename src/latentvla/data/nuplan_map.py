"""nuPlan map packages (``nuplan-maps-v1.0``) for our :class:`~latentvla.map_api.MapAPI`: write and read.

Real NAVSIM users have nuPlan maps: ``$NUPLAN_MAPS_ROOT/nuplan-maps-v1.0.json`` (``{city: {"version": v, "layers":
{...raster metadata...}}}``) and ``<city>/<version>/map.gpkg``, one GeoPackage per city. :func:`write_nuplan_map`
exports an embedded-world map in that format (so nuplan-devkit's ``GPKGMapsDB``/``NuPlanMap`` and NAVSIM can load it)
and :func:`read_nuplan_map` imports real city maps. Runtime needs only sqlite3, shapely and numpy.

Format decisions
----------------
* **Ids.** nuPlan ids are integer GPKG FIDs, compared as integers and used as strings. The writer draws FIDs from
  one counter shared by all tables (so an FID names one object map-wide), in a fixed order: lanes, lane connectors,
  direct-link connectors, roadblocks, roadblock connectors, direct-link roadblock connectors, intersections,
  crosswalks, walkways, car parks, generic drivable areas, stop lines, then internal rows (baseline paths,
  boundaries, connector polygons, road segments); ids are sorted within each group, so FIDs are deterministic. A
  lane's FID equals its ``lane_fid``. The writer returns {our id -> FID string}; ids must be unique map-wide.
* **Layers.** lanes -> ``lanes_polygons`` (+ ``baseline_paths`` + ``boundaries``); connectors -> ``lane_connectors``
  (``exit_lane_fid`` = upstream lane, ``entry_lane_fid`` = downstream lane) + ``baseline_paths`` +
  ``gen_lane_connectors_scaled_width_polygons``; roadblocks of lanes -> ``lane_groups_polygons`` (also one
  ``road_segments`` row each, which nuPlan's own drivable-area layer uses); roadblocks of connectors ->
  ``lane_group_connectors`` (geometry: the union of their connector polygons; not a drivable layer, as in NAVSIM's
  DAC); intersection / crosswalk / walkway / carpark / drivable_area -> ``intersections`` / ``crosswalks`` /
  ``walkways`` / ``carpark_areas`` / ``generic_drivable_areas``; stop_line -> ``stop_polygons``. Empty
  ``traffic_lights`` and ``dubins_nodes`` layers are written because some nuPlan readers list them.
* **Neighbours.** ``lane_index`` (0 = left-most) follows right-neighbour chains inside a roadblock; separate chains
  in one roadblock are separated by an index gap, since nuPlan derives neighbours from ``lane_index`` +- 1.
  Neighbours across roadblocks and one-sided neighbour links cannot be expressed.
* **Boundary types.** nuPlan's ``boundary_type_fid`` in the real maps takes 0 (dashed white lane line),
  2 (solid white) and 3 (unknown / virtual); there is no yellow. Written: dashed_white -> 0, solid_white and
  solid_yellow -> 2, none -> 3; the exact type also goes into the extension column
  ``boundaries.latentvla_boundary_type``, which our reader prefers. Real maps read as 0 -> dashed_white,
  2 -> solid_white, anything else -> none. Identical boundaries (same points, same type) share one row.
* **Traffic lights.** nuPlan marks a signalised connector by a non-empty ``traffic_light_stop_line_fids`` (the stop
  polygons of its entry lane, ``stop_polygon_type_fid`` 2); light states in logs are keyed by connector id. We
  write, for each connector with a ``traffic_light_id``, the stop lines whose ``stop_line_lanes`` include its
  upstream lane; our light-group id goes into ``lane_connectors.latentvla_traffic_light_id``. Reading a real map,
  a signalised connector's ``traffic_light_id`` is its own FID (nuPlan has no light groups); others get None.
  Stop lines without lights are written with type 5 (unknown). ``stop_polygons.lane_fids`` /
  ``lane_connector_fids`` list the governed lanes; ``stop_line_lanes`` is read from them plus the upstream lanes of
  signalised connectors. Every stop polygon (all nuPlan types) becomes a ``stop_line`` polygon.
* **Direct lane links.** nuPlan joins lanes only through lane connectors, while our corridors link lane -> lane
  across roadblock cuts. The writer emits, for each such link, a connector (key ``"A->B"``) whose baseline runs from
  the end of lane A to the start of lane B, 5e-7 m long when they touch (nuPlan's ``extract_discrete_polyline``
  asserts a positive length), flagged ``latentvla_direct_link``, plus one roadblock connector per roadblock pair
  (key ``"RBa->RBb"``). The reader collapses flagged connectors and any connector whose baseline is shorter than
  1e-6 m back into direct links (dropping them and their roadblock connectors); this never applies to real maps.
* **Coordinates / CRS.** The writer declares the coordinates (global metres, written unchanged) to be in a WGS84
  UTM zone (default EPSG:32619, Boston's) in every layer and in ``meta.projectedCoordSystem``, so nuPlan's
  ``to_crs`` on load is the identity. The reader keeps coordinates of layers stored in the projected CRS as they
  are and projects layers stored in WGS84 lon/lat (how nuPlan's own files appear to be stored: its loader always
  reprojects) into the UTM zone named by ``meta``.
* **Index.** ``nuplan-maps-v1.0.json`` is created or updated (other maps kept) with ``{"version": v, "layers": {}}``
  via a temp file + os.replace; the GPKG is written the same way. No raster layers are written. Note that
  nuplan-devkit's ``GPKGMapsDB`` opens all four nuPlan cities on construction, so a maps root used by an unmodified
  devkit must hold maps under those four names.

Round trip (read(write(m)) equals m after the id mapping): lane ids, centerlines and boundaries (exact), boundary
types, successors / predecessors (sorted by FID), neighbours within a roadblock, is_connector, speed limits,
roadblock ids, connectors' ``traffic_light_id``, every polygon layer (exact rings), the drivable area and
``stop_line_lanes``. Lost: the map name (the reader names the map after its folder), neighbours across roadblocks,
polygon holes and extra parts (extra parts of a multipolygon become ``"<fid>_<k>"`` entries), and list order.
Roadblocks without a polygon gain one (the union of their lanes).
"""

from latentvla.data.nuplan_map_read import read_nuplan_map
from latentvla.data.nuplan_map_write import write_nuplan_map

__all__ = ["read_nuplan_map", "write_nuplan_map"]
