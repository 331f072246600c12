"""A first-person 3D maze (Wolfenstein-style), procedural from a seed.

The map is a grid of squares, each open or a wall block: a ``maze_size`` x ``maze_size``
cell maze carved by a randomized depth-first search (cells on odd squares, the squares
between them opened where the maze links two cells), plus a few extra openings so that
the maze has loops. Walls come in zones of four kinds (brick, stone, wood, tiles) with a
rare framed painting as a landmark. Floating coloured diamonds (pickups) give +1 on
contact and stay gone; collecting all of them ends the episode.

The player stands on the floor with the eye at half the wall height and moves FORWARD /
BACKWARD by ``move_speed`` squares per step or turns by ``turn_degrees``. Positions are
integers in 1/``FP`` square units, so collisions (a square box of half-side
``player_radius`` against wall squares, sliding along walls) and state snapshots are exact.

Rendering (ModernGL, offscreen; assets/shaders/maze.vert and maze.frag) is one
full-screen pass that raycasts every pixel through the map, stored as a small integer
texture, and writes linear depth; the pickups follow as instanced billboards, depth-tested
against it. A second, integer colour attachment holds the content id of every pixel (see
:meth:`MazeWorld.content_map`); it is read back only when asked for.
Map units: x grows to the east (right on the map), y to the south (down); angle 0 faces
east and turning right increases the angle.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import moderngl
import numpy as np

from world.core import InvalidSettingError, StepResult, World, settings_from_kwargs
from world.gl import get_context
from world.paths import shader_source

NOOP, FORWARD, BACKWARD, TURN_LEFT, TURN_RIGHT = range(5)
FP = 4096  # position sub-units per map square
PICKUP_FLAG = 128  # map texture value of an open square with an active pickup (its shadow)
WALL_KINDS = 4  # brick, stone, wood, tiles; kind WALL_KINDS + 1 is the painting landmark
PAINTING = WALL_KINDS + 1
PICKUP_COLORS = 5  # palette size in the shader
PICKUP_REACH = 0.25  # a pickup is collected when the player's centre comes this close + radius
_STEPS = ((1, 0), (-1, 0), (0, 1), (0, -1))
# content id layout (int32, see maze.frag): type << 28 | x << 20 | y << 12 | detail
ID_WALL, ID_FLOOR, ID_CEILING, ID_PICKUP = 1, 2, 3, 4


@dataclasses.dataclass
class MazeSettings:
    resolution: int = 64
    maze_size: int = 12
    loops: float = 0.08
    pickups: int = 10
    move_speed: float = 0.25
    turn_degrees: float = 15.0
    player_radius: float = 0.25
    fov_degrees: float = 66.0
    painting_share: float = 0.04
    max_steps: int = 1000

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.resolution, int) and 8 <= self.resolution <= 4096,
             f"resolution must be an int in 8..4096, got {self.resolution!r}"),
            (isinstance(self.maze_size, int) and 3 <= self.maze_size <= 100,
             f"maze_size must be an int in 3..100 (cells per side), got {self.maze_size!r}"),
            (0 <= self.loops <= 1,
             f"loops must be a share in [0, 1] of the remaining inner walls, got {self.loops!r}"),
            (isinstance(self.pickups, int) and 0 <= self.pickups <= self.maze_size ** 2 - 5,
             f"pickups must be an int in 0..{self.maze_size ** 2 - 5} (at most one per maze "
             f"cell away from the start), got {self.pickups!r}"),
            (0 < self.move_speed <= 0.5,
             f"move_speed must be in (0, 0.5] squares per step, got {self.move_speed!r}"),
            (0 < self.turn_degrees <= 90,
             f"turn_degrees must be in (0, 90] degrees per step, got {self.turn_degrees!r}"),
            (0 < self.player_radius < 0.5,
             f"player_radius must be in (0, 0.5) squares, got {self.player_radius!r}"),
            (20 <= self.fov_degrees <= 120,
             f"fov_degrees must be in 20..120, got {self.fov_degrees!r}"),
            (0 <= self.painting_share <= 1,
             f"painting_share must be a share in [0, 1], got {self.painting_share!r}"),
            (isinstance(self.max_steps, int) and self.max_steps >= 1,
             f"max_steps must be an int >= 1, got {self.max_steps!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidSettingError(msg)


# ---------------------------------------------------------------------- generation
@dataclasses.dataclass
class MazeMap:
    """What a seed generates: the map, the start pose and the pickups."""

    kinds: np.ndarray  # (H, W) uint8: 0 open, 1..WALL_KINDS wall kinds, PAINTING landmark
    start: tuple[int, int]  # start square
    start_degrees: float  # start heading (down an open corridor)
    pickup_squares: np.ndarray  # (K, 2) int64 [x, y]
    pickup_colors: np.ndarray  # (K,) int64 palette indices


def carve_maze(n: int, loops: float, rng: np.random.Generator) -> np.ndarray:
    """(2n+1, 2n+1) bool map, True = open: a randomized-DFS maze plus extra openings."""
    side = 2 * n + 1
    open_ = np.zeros((side, side), bool)
    seen = np.zeros((n, n), bool)
    stack = [(int(rng.integers(n)), int(rng.integers(n)))]
    seen[stack[0][1], stack[0][0]] = True
    open_[2 * stack[0][1] + 1, 2 * stack[0][0] + 1] = True
    while stack:
        x, y = stack[-1]
        nexts = [(x + dx, y + dy) for dx, dy in _STEPS
                 if 0 <= x + dx < n and 0 <= y + dy < n and not seen[y + dy, x + dx]]
        if not nexts:
            stack.pop()
            continue
        nx, ny = nexts[int(rng.integers(len(nexts)))]
        seen[ny, nx] = True
        open_[2 * ny + 1, 2 * nx + 1] = True
        open_[y + ny + 1, x + nx + 1] = True  # the square between the two cells
        stack.append((nx, ny))
    # loops: open a share of the inner walls that separate two cells
    between = np.zeros_like(open_)
    between[1:-1:2, 2:-1:2] = True  # between horizontal neighbours
    between[2:-1:2, 1:-1:2] = True  # between vertical neighbours
    ys, xs = np.nonzero(between & ~open_)
    extra = rng.random(len(xs)) < loops
    open_[ys[extra], xs[extra]] = True
    return open_


def wall_kinds(open_: np.ndarray, painting_share: float, rng: np.random.Generator) -> np.ndarray:
    """Wall kinds in zones (nearest of a few random centres), with rare paintings."""
    H, W = open_.shape
    n_zones = max(WALL_KINDS, (H * W) // 80)
    centres = rng.random((n_zones, 2)) * (W, H)
    zone_kind = np.concatenate([np.arange(WALL_KINDS), rng.integers(0, WALL_KINDS, n_zones - WALL_KINDS)])
    ys, xs = np.mgrid[0:H, 0:W]
    d2 = (xs[..., None] + 0.5 - centres[:, 0]) ** 2 + (ys[..., None] + 0.5 - centres[:, 1]) ** 2
    kinds = (zone_kind[d2.argmin(-1)] + 1).astype(np.uint8)
    # paintings only where a wall faces an open square, so they can be seen
    faces_open = np.zeros_like(open_)
    faces_open[1:, :] |= open_[:-1, :]
    faces_open[:-1, :] |= open_[1:, :]
    faces_open[:, 1:] |= open_[:, :-1]
    faces_open[:, :-1] |= open_[:, 1:]
    paint = faces_open & (rng.random((H, W)) < painting_share)
    kinds[paint] = PAINTING
    kinds[open_] = 0
    return kinds


def generate_maze(s: MazeSettings, rng: np.random.Generator) -> MazeMap:
    open_ = carve_maze(s.maze_size, s.loops, rng)
    kinds = wall_kinds(open_, s.painting_share, rng)
    n = s.maze_size
    cells = [(2 * x + 1, 2 * y + 1) for y in range(n) for x in range(n)]
    start = cells[int(rng.integers(len(cells)))]
    exits = [i for i, (dx, dy) in enumerate(_STEPS) if open_[start[1] + dy, start[0] + dx]]
    step = _STEPS[exits[int(rng.integers(len(exits)))]]
    start_degrees = math.degrees(math.atan2(step[1], step[0])) % 360.0
    # pickups on maze cells away from the start
    far = [c for c in cells if abs(c[0] - start[0]) + abs(c[1] - start[1]) > 2]
    order = rng.permutation(len(far))[: s.pickups]
    squares = np.array([far[i] for i in order], np.int64).reshape(-1, 2)
    colors = rng.integers(0, PICKUP_COLORS, len(squares)).astype(np.int64)
    return MazeMap(kinds, start, start_degrees, squares, colors)


# ---------------------------------------------------------------------- rendering
class _Renderer:
    """Offscreen rendering: an RGB frame plus an int32 content id attachment.

    Two draws per frame: the raycasting pass (walls, floor, ceiling; it writes linear depth)
    and the active pickups as instanced billboards, depth-tested against it.
    """

    def __init__(self, ctx: moderngl.Context, map_shape: tuple[int, int], n_pickups: int,
                 fov_degrees: float) -> None:
        self.ctx = ctx
        vert, frag = shader_source("maze.vert"), shader_source("maze.frag")
        self.scene = ctx.program(vertex_shader=vert, fragment_shader=frag)
        self.sprites = ctx.program(vertex_shader=_with_define(vert, "PICKUPS"),
                                   fragment_shader=_with_define(frag, "PICKUPS"))
        self.scene_vao = ctx.vertex_array(self.scene, [])
        self.pickup_vbo = ctx.buffer(reserve=max(n_pickups, 1) * 16)
        self.sprite_vao = ctx.vertex_array(self.sprites, [(self.pickup_vbo, "4f/i", "in_pickup")])
        self.n_pickups = 0
        H, W = map_shape
        self.map_tex = ctx.texture((W, H), 1, dtype="u1")
        self.map_tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self.scene["map_tex"] = 0
        self.scene["max_ray_steps"] = W + H
        for prog in (self.scene, self.sprites):
            prog["far"] = float(W + H)
        self.tan_half = math.tan(math.radians(fov_degrees) / 2)
        self.views = [(p["pos"], p["dir"], p["plane"]) for p in (self.scene, self.sprites)]
        self.u_screen = self.scene["screen"]
        self.fbos: dict[int, tuple[moderngl.Framebuffer, np.ndarray]] = {}

    def fbo(self, size: int) -> tuple[moderngl.Framebuffer, np.ndarray]:
        if size not in self.fbos:
            fbo = self.ctx.framebuffer(
                color_attachments=[self.ctx.renderbuffer((size, size), 3),
                                   self.ctx.renderbuffer((size, size), 1, dtype="i4")],
                depth_attachment=self.ctx.depth_renderbuffer((size, size)))
            self.fbos[size] = (fbo, np.empty((size, size, 3), np.uint8))
        return self.fbos[size]

    def set_scene(self, map_values: np.ndarray, pickups: np.ndarray) -> None:
        """Upload the map (H, W) uint8 and the active pickups, rows (x, y, palette, id)."""
        self.map_tex.write(np.ascontiguousarray(map_values, np.uint8).tobytes())
        self.n_pickups = len(pickups)
        if self.n_pickups:
            self.pickup_vbo.write(np.ascontiguousarray(pickups, np.float32).tobytes())

    def render(self, size: int, x: float, y: float, degrees: float) -> np.ndarray:
        """Render the view from (x, y) facing ``degrees``; returns the reused frame buffer."""
        fbo, out = self.fbo(size)
        fbo.use()
        a = math.radians(degrees)
        c, s = math.cos(a), math.sin(a)
        plane = (-s * self.tan_half, c * self.tan_half)
        for u_pos, u_dir, u_plane in self.views:
            u_pos.value = (x, y)
            u_dir.value = (c, s)
            u_plane.value = plane
        self.u_screen.value = (size, size)
        self.map_tex.use(0)
        ctx = self.ctx
        ctx.enable(moderngl.DEPTH_TEST)  # the shared context's default (off) is restored below
        ctx.depth_func = "1"  # the raycasting pass writes every pixel's depth
        self.scene_vao.render(moderngl.TRIANGLES, vertices=3)
        ctx.depth_func = "<"
        if self.n_pickups:
            self.sprite_vao.render(moderngl.TRIANGLE_STRIP, vertices=4, instances=self.n_pickups)
        ctx.disable(moderngl.DEPTH_TEST)
        fbo.read_into(out, components=3)
        return out

    def read_ids(self, size: int) -> np.ndarray:
        fbo, _ = self.fbo(size)
        raw = fbo.read(components=1, attachment=1, dtype="i4")
        return np.frombuffer(raw, np.int32).reshape(size, size).astype(np.int64)

    def release(self) -> None:
        for fbo, _ in self.fbos.values():
            for rb in (*fbo.color_attachments, fbo.depth_attachment):
                rb.release()
            fbo.release()
        self.fbos.clear()
        for obj in (self.scene_vao, self.sprite_vao, self.pickup_vbo, self.map_tex, self.scene,
                    self.sprites):
            obj.release()


def _with_define(source: str, name: str) -> str:
    """GLSL source with ``#define name`` right after its #version line."""
    version, rest = source.split("\n", 1)
    return f"{version}\n#define {name}\n{rest}"


# ---------------------------------------------------------------------- the world
class MazeWorld(World):
    name = "maze3d"
    supports_state = True
    action_names = ("NOOP", "FORWARD", "BACKWARD", "TURN_LEFT", "TURN_RIGHT")
    tick_rate = 15.0
    keymap_name = "maze3d"

    PICKUP_REWARD = 1.0

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings: MazeSettings = settings_from_kwargs(MazeSettings, settings, self.name)
        s = self.settings
        self._radius = round(s.player_radius * FP)
        self._reach2 = round((s.player_radius + PICKUP_REACH) * FP) ** 2
        self._step_len = s.move_speed * FP
        self._renderer: _Renderer | None = None
        self._map_seed: int | None = None
        self._frame: np.ndarray | None = None

    # ------------------------------------------------------------ properties
    @property
    def frame_shape(self) -> tuple[int, int, int]:
        r = self.settings.resolution
        return (r, r, 3)

    @property
    def num_cells(self) -> int:
        """Open map squares (all reachable: the maze is connected); ``info["cell"]`` is one."""
        return self._num_cells

    @property
    def map_kinds(self) -> np.ndarray:
        """(H, W) uint8 map: 0 open, else the wall kind."""
        return self._maze.kinds.copy()

    @property
    def pickup_squares(self) -> np.ndarray:
        """(K, 2) int64 [x, y] map squares of all pickups of the maze (collected ones too)."""
        return self._maze.pickup_squares.copy()

    @property
    def degrees(self) -> float:
        """The current heading in degrees: 0 faces east (+x), 90 south (+y)."""
        return (self._maze.start_degrees + self._heading * self.settings.turn_degrees) % 360.0

    # ------------------------------------------------------------ reset / step
    def _reset(self, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        if seed != self._map_seed or self._renderer is None:
            self._load_map(seed)
        sx, sy = self._maze.start
        self._x, self._y = sx * FP + FP // 2, sy * FP + FP // 2
        self._heading = 0
        self._active = np.ones(len(self._maze.pickup_squares), bool)
        self._score = 0.0
        self._upload_pickups()
        return self._render_frame().copy(), self._make_info(NOOP)

    def _step(self, action: int) -> StepResult:
        effective = NOOP
        if action in (TURN_LEFT, TURN_RIGHT):
            self._heading += 1 if action == TURN_RIGHT else -1
            effective = action
        elif action in (FORWARD, BACKWARD) and self._walk(1 if action == FORWARD else -1):
            effective = action
        reward = self._collect() if effective in (FORWARD, BACKWARD) else 0.0
        self._score += reward
        terminated = reward > 0 and not self._active.any()
        truncated = not terminated and self._steps + 1 >= self.settings.max_steps
        return StepResult(self._render_frame().copy(), reward, terminated, truncated,
                          self._make_info(effective))

    def _load_map(self, seed: int) -> None:
        self._maze = generate_maze(self.settings, np.random.default_rng([seed, 0]))
        kinds = self._maze.kinds
        self._map_w = kinds.shape[1]
        self._wall = (kinds != 0).ravel().tolist()
        self._num_cells = int((kinds == 0).sum())
        squares = self._maze.pickup_squares
        self._pickup_pos = [(int(x) * FP + FP // 2, int(y) * FP + FP // 2) for x, y in squares]
        self._pickup_rows = np.column_stack([
            squares + 0.5, self._maze.pickup_colors, np.arange(len(squares))]).astype(np.float32)
        if self._renderer is None:  # the map's size and pickup count are fixed by the settings
            self._renderer = _Renderer(get_context(), kinds.shape, len(squares),
                                       self.settings.fov_degrees)
        self._map_seed = seed

    # ------------------------------------------------------------ mechanics
    # Per-step logic is plain Python ints: for one player that is much faster than numpy.
    def _walk(self, sign: int) -> bool:
        """Move along the heading (sign -1: backwards), sliding along walls; True if moved."""
        a = math.radians(self.degrees)
        dx = sign * round(self._step_len * math.cos(a))
        dy = sign * round(self._step_len * math.sin(a))
        x = self._move_axis(self._x, self._y, dx, horizontal=True)
        y = self._move_axis(self._y, x, dy, horizontal=False)
        moved = (x, y) != (self._x, self._y)
        self._x, self._y = x, y
        return moved

    def _move_axis(self, p: int, q: int, d: int, horizontal: bool) -> int:
        """New coordinate ``p`` after moving by ``d`` along one axis, flush against walls.

        The player is the box [p - r, p + r) x [q - r, q + r) in sub-units; it may touch
        a wall square but never overlap one.
        """
        r = self._radius
        lanes = range((q - r) // FP, (q + r - 1) // FP + 1)
        if d > 0:
            squares = range((p + r - 1) // FP + 1, (p + d + r - 1) // FP + 1)
        elif d < 0:
            squares = range((p - r) // FP - 1, (p + d - r) // FP - 1, -1)
        else:
            return p
        for sq in squares:
            if any(self._is_wall(sq, lane) if horizontal else self._is_wall(lane, sq) for lane in lanes):
                return sq * FP - r if d > 0 else (sq + 1) * FP + r
        return p + d

    def _is_wall(self, x: int, y: int) -> bool:
        return self._wall[y * self._map_w + x]

    def _collect(self) -> float:
        """Collect the active pickups within reach; each gives PICKUP_REWARD once."""
        reward = 0.0
        for i in np.flatnonzero(self._active).tolist():
            px, py = self._pickup_pos[i]
            if (px - self._x) ** 2 + (py - self._y) ** 2 < self._reach2:
                self._active[i] = False
                reward += self.PICKUP_REWARD
        if reward:
            self._upload_pickups()
        return reward

    # ------------------------------------------------------------ rendering
    def _upload_pickups(self) -> None:
        """Send the map (active pickups flagged for their floor shadows) and pickups to GL."""
        assert self._renderer is not None
        values = self._maze.kinds.copy()
        squares = self._maze.pickup_squares[self._active]
        values[squares[:, 1], squares[:, 0]] = PICKUP_FLAG
        self._renderer.set_scene(values, self._pickup_rows[self._active])

    def _render_frame(self, size: int | None = None) -> np.ndarray:
        """Render the current view; at the frame resolution it becomes the current frame."""
        assert self._renderer is not None
        size = size or self.settings.resolution
        out = self._renderer.render(size, self._x / FP, self._y / FP, self.degrees)
        if size == self.settings.resolution:
            self._frame = out
        return out

    def render(self, size: int | None = None) -> np.ndarray:
        """The current view, re-rendered (not upscaled) at ``size`` x ``size``."""
        if self._frame is None:
            raise RuntimeError("call reset() before render()")
        if size is None or size == self.settings.resolution:
            return self._frame.copy()
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"render size must be a positive int, got {size!r}")
        return self._render_frame(size).copy()

    def content_map(self) -> np.ndarray | None:
        """int64 (H, W) id of the world content each pixel of the current frame shows.

        ``type << 28 | x << 20 | y << 12 | detail`` with type 1 wall (square x, y; detail
        face << 10 | texel u << 5 | texel v on the 32 x 32 texel face, face 0..3 = the
        square's W, E, N, S side), 2 floor and 3 ceiling (square x, y; detail: position in
        the square on a 16 x 16 grid), 4 pickup (pickup index << 8 | position on the
        billboard on a 16 x 16 grid). Ids do not depend on where the camera is.
        """
        if self._frame is None or self._renderer is None:
            return None
        return self._renderer.read_ids(self.settings.resolution)

    def _make_info(self, effective: int) -> dict[str, Any]:
        return {
            "effective_action": effective,
            "player_pos": (self._x / FP, self._y / FP),
            "cell": (self._x // FP, self._y // FP),
            "angle": self.degrees,
            "score": self._score,
            "pickups_left": int(self._active.sum()),
        }

    # ------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        if self._renderer is None:
            raise RuntimeError("call reset() before get_state()")
        return {
            **self._base_state(),
            "map_seed": self._map_seed,
            "x": self._x, "y": self._y, "heading": self._heading,
            "active": self._active.copy(),
            "score": self._score,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        seed = int(state["map_seed"])
        if seed != self._map_seed or self._renderer is None:
            self._load_map(seed)
        self._restore_base_state(state)
        self._x, self._y, self._heading = int(state["x"]), int(state["y"]), int(state["heading"])
        self._active = np.array(state["active"], bool)
        self._score = float(state["score"])
        self._upload_pickups()
        self._render_frame()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.release()
        self._renderer = None
        self._map_seed = None
        self._frame = None
