"""The default world: a top-down adventure (Zelda-style), procedural from a seed.

A grid of rooms (areas) joined by doors; inside each room grass, sand, trees, water and
lava; coins that give +1 and stay gone; wandering creatures that block the way; lava ends
the episode (-1). The player walks in pixel steps and faces where it last tried to go.

The design choices docs/ALGORITHMS.md section 10 discusses for a small world model are settings:
- ``camera``: "follow" (the view is centred on the player and clamped to the map, so
  every move shifts the whole frame by ``speed`` pixels) or "room" (fixed on the player's
  room; a room larger than the view is followed inside the room's bounds);
- ``speed``: player speed in world pixels per step;
- ``scale``: object scale, frame pixels per world pixel at 64x64 (objects are 8*scale px).

World units are pixels; tiles and sprites are 8x8 world pixels. A frame at
``resolution`` R shows a square view of 64/scale world pixels; ``render(size)`` shows the
same view at any size. Frames are rendered offscreen with ModernGL.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any

import moderngl
import numpy as np

from world import adventure_art as art
from world.core import InvalidSettingError, StepResult, World, settings_from_kwargs
from world.gl import get_context
from world.paths import shader_source

T = art.T
NOOP, UP, DOWN, LEFT, RIGHT = range(5)
DIRS = {UP: (0, -1), DOWN: (0, 1), LEFT: (-1, 0), RIGHT: (1, 0)}
FACING_OF_ACTION = {DOWN: 0, UP: 1, LEFT: 2, RIGHT: 3}
_CREATURE_STEPS = ((0, -1), (0, 1), (-1, 0), (1, 0))


@dataclasses.dataclass
class AdventureSettings:
    resolution: int = 64
    camera: str = "follow"
    speed: int = 2
    scale: float = 1.0
    rooms_x: int = 4
    rooms_y: int = 4
    room_tiles: int = 10
    coins_per_room: int = 3
    creatures_per_room: float = 1.0
    lava_rooms: float = 0.35
    max_steps: int = 1000

    def __post_init__(self) -> None:
        checks = [
            (self.camera in ("follow", "room"), f"camera must be 'follow' or 'room', got {self.camera!r}"),
            (isinstance(self.speed, int) and 1 <= self.speed <= T,
             f"speed must be an int in 1..{T} (world pixels per step), got {self.speed!r}"),
            (self.scale > 0, f"scale must be > 0 (frame pixels per world pixel), got {self.scale!r}"),
            (isinstance(self.resolution, int) and 8 <= self.resolution <= 4096,
             f"resolution must be an int in 8..4096, got {self.resolution!r}"),
            (self.rooms_x >= 1 and self.rooms_y >= 1, f"need at least one room, got {self.rooms_x}x{self.rooms_y}"),
            (self.room_tiles >= 7, f"room_tiles must be >= 7, got {self.room_tiles}"),
            (self.coins_per_room >= 0, f"coins_per_room must be >= 0, got {self.coins_per_room}"),
            (self.creatures_per_room >= 0, f"creatures_per_room must be >= 0, got {self.creatures_per_room}"),
            (0 <= self.lava_rooms <= 1, f"lava_rooms must be a share in [0, 1], got {self.lava_rooms}"),
            (self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidSettingError(msg)

    @property
    def view(self) -> float:
        """Side of the visible square in world pixels."""
        return 64.0 / self.scale


# ---------------------------------------------------------------------- generation
def generate_map(s: AdventureSettings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                          np.ndarray, tuple[int, int]]:
    """Tile map (H, W) uint8 of kinds, coin tiles (K, 2) [tx, ty], creature tiles, start tile."""
    R = s.room_tiles
    W, H = s.rooms_x * R, s.rooms_y * R
    tiles = np.full((H, W), art.GRASS, np.uint8)
    # decorative tufts: a fixed pattern per seed
    tiles[rng.random((H, W)) < 0.12] = art.GRASS_TUFT
    # room borders
    for ry in range(s.rooms_y):
        for rx in range(s.rooms_x):
            y0, x0 = ry * R, rx * R
            tiles[y0, x0:x0 + R] = art.WALL
            tiles[y0 + R - 1, x0:x0 + R] = art.WALL
            tiles[y0:y0 + R, x0] = art.WALL
            tiles[y0:y0 + R, x0 + R - 1] = art.WALL
    # doors: a random spanning tree over rooms plus a few extra links, 2 tiles wide
    links = _room_links(s, rng)
    door_tiles: list[tuple[int, int]] = []
    for (ax, ay), (bx, by) in links:
        off = int(rng.integers(2, R - 3))
        if ax != bx:  # horizontal neighbours: opening in the shared vertical walls
            x = max(ax, bx) * R
            for dy in (0, 1):
                y = ay * R + off + dy
                tiles[y, x - 1] = tiles[y, x] = art.DOOR_FLOOR
                door_tiles += [(x - 1, y), (x, y)]
        else:
            y = max(ay, by) * R
            for dx in (0, 1):
                x = ax * R + off + dx
                tiles[y - 1, x] = tiles[y, x] = art.DOOR_FLOOR
                door_tiles += [(x, y - 1), (x, y)]
    # room interiors
    coins: list[tuple[int, int]] = []
    creatures: list[tuple[int, int]] = []
    n_rooms = s.rooms_x * s.rooms_y
    start_room = int(rng.integers(n_rooms))
    start: tuple[int, int] | None = None
    for room in range(n_rooms):
        rx, ry = room % s.rooms_x, room // s.rooms_x
        for _attempt in range(50):
            interior = _decorate_room(s, rng, allow_lava=room != start_room)
            y0, x0 = ry * R + 1, rx * R + 1
            trial = tiles.copy()
            trial[y0:y0 + R - 2, x0:x0 + R - 2] = interior
            # keep the tiles next to doors walkable
            for tx, ty in door_tiles:
                for nx, ny in ((tx + 1, ty), (tx - 1, ty), (tx, ty + 1), (tx, ty - 1)):
                    if x0 <= nx < x0 + R - 2 and y0 <= ny < y0 + R - 2 and \
                            (art.SOLID[trial[ny, nx]] or art.HAZARD[trial[ny, nx]]):
                        trial[ny, nx] = art.SAND
            free = [(x, y) for y in range(y0, y0 + R - 2) for x in range(x0, x0 + R - 2)
                    if not art.SOLID[trial[y, x]] and not art.HAZARD[trial[y, x]]]
            room_doors = [(x, y) for x, y in door_tiles if x0 - 1 <= x <= x0 + R - 2 and y0 - 1 <= y <= y0 + R - 2]
            if free and _connected(trial, free + room_doors):
                tiles = trial
                break
        order = rng.permutation(len(free))
        picks = [free[i] for i in order]
        n_creatures = int(s.creatures_per_room) + int(rng.random() < s.creatures_per_room % 1)
        if room == start_room:
            start = picks.pop(0)
            # keep the start's neighbourhood clear of creatures and coins
            picks = [p for p in picks if abs(p[0] - start[0]) + abs(p[1] - start[1]) > 2]
        coins += picks[: s.coins_per_room]
        creatures += picks[s.coins_per_room: s.coins_per_room + n_creatures]
    assert start is not None
    return (tiles, np.array(coins, np.int64).reshape(-1, 2),
            np.array(creatures, np.int64).reshape(-1, 2), start)


def _room_links(s: AdventureSettings, rng: np.random.Generator) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    cells = [(x, y) for y in range(s.rooms_y) for x in range(s.rooms_x)]
    edges = [((x, y), (x + 1, y)) for x, y in cells if x + 1 < s.rooms_x]
    edges += [((x, y), (x, y + 1)) for x, y in cells if y + 1 < s.rooms_y]
    order = rng.permutation(len(edges))
    parent = {c: c for c in cells}

    def find(c: tuple[int, int]) -> tuple[int, int]:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    links = []
    for i in order:
        a, b = edges[i]
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
            links.append(edges[i])
        elif rng.random() < 0.3:  # a few loops
            links.append(edges[i])
    return links


def _decorate_room(s: AdventureSettings, rng: np.random.Generator, allow_lava: bool) -> np.ndarray:
    n = s.room_tiles - 2
    room = np.where(rng.random((n, n)) < 0.12, art.GRASS_TUFT, art.GRASS).astype(np.uint8)
    # a sand path across the room
    if rng.random() < 0.6:
        if rng.random() < 0.5:
            room[int(rng.integers(1, n - 1)), :] = art.SAND
        else:
            room[:, int(rng.integers(1, n - 1))] = art.SAND
    # tree clumps
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.integers(0, n - 1, size=2)
        w, h = rng.integers(1, 3, size=2)
        room[y:y + h, x:x + w] = art.TREE
    # a pond
    if rng.random() < 0.5:
        x, y = rng.integers(1, n - 3, size=2)
        room[y:y + 2, x:x + int(rng.integers(2, 4))] = art.WATER
    # lava pool (the hazard)
    if allow_lava and rng.random() < s.lava_rooms:
        x, y = rng.integers(1, n - 2, size=2)
        room[y:y + int(rng.integers(1, 3)), x:x + int(rng.integers(1, 3))] = art.LAVA
    return room


def _flood(tiles: np.ndarray, start: tuple[int, int], targets: set[int] | None = None) -> tuple[bytearray, int]:
    """Breadth-first flood over walkable tiles from ``start`` (x, y) on flat indices (y * W + x):
    (the visited flags, how many were visited). With ``targets`` it stops once all are visited."""
    H, W = tiles.shape
    walk = (~art.SOLID[tiles] & ~art.HAZARD[tiles]).ravel().tolist()
    seen = bytearray(H * W)
    first = start[1] * W + start[0]
    seen[first] = 1
    todo = deque([first])
    left = None if targets is None else set(targets) - {first}
    count = 1
    while todo and (left is None or left):
        i = todo.popleft()
        x = i % W
        for j, ok in ((i + 1, x + 1 < W), (i - 1, x > 0), (i + W, i + W < H * W), (i - W, i >= W)):
            if ok and walk[j] and not seen[j]:
                seen[j] = 1
                count += 1
                todo.append(j)
                if left is not None:
                    left.discard(j)
    return seen, count


def _connected(tiles: np.ndarray, cells: list[tuple[int, int]]) -> bool:
    """True when every cell in ``cells`` is reachable from the first over walkable tiles."""
    W = tiles.shape[1]
    seen, _ = _flood(tiles, cells[0], {y * W + x for x, y in cells})
    return all(seen[y * W + x] for x, y in cells)


def reachable_tiles(tiles: np.ndarray, start: tuple[int, int]) -> int:
    return _flood(tiles, start)[1]


# ---------------------------------------------------------------------- rendering
class _Renderer:
    """Two passes into an offscreen framebuffer: the tile map, then instanced sprites."""

    def __init__(self, ctx: moderngl.Context, tiles: np.ndarray) -> None:
        self.ctx = ctx
        self.tile_prog = ctx.program(vertex_shader=shader_source("adventure_tiles.vert"),
                                     fragment_shader=shader_source("adventure_tiles.frag"))
        self.sprite_prog = ctx.program(vertex_shader=shader_source("adventure_sprites.vert"),
                                       fragment_shader=shader_source("adventure_sprites.frag"))
        quad = np.array([-1, -1, 1, -1, -1, 1, 1, 1], "f4")
        self.quad_vbo = ctx.buffer(quad.tobytes())
        self.tile_vao = ctx.vertex_array(self.tile_prog, [(self.quad_vbo, "2f", "in_pos")])
        corners = np.array([0, 0, 1, 0, 0, 1, 1, 1], "f4")
        self.corner_vbo = ctx.buffer(corners.tobytes())
        self.max_sprites = 0
        self.inst_vbo: moderngl.Buffer | None = None
        self.sprite_vao: moderngl.VertexArray | None = None
        H, W = tiles.shape
        self.map_tex = ctx.texture((W, H), 1, np.ascontiguousarray(tiles).tobytes(), dtype="u1")
        self.map_tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
        atlas = art.tile_atlas()
        self.tile_atlas = ctx.texture((atlas.shape[1], atlas.shape[0]), 3, atlas.tobytes())
        self.tile_atlas.filter = (moderngl.NEAREST, moderngl.NEAREST)
        satlas = art.sprite_atlas()
        self.sprite_atlas = ctx.texture((satlas.shape[1], satlas.shape[0]), 4, satlas.tobytes())
        self.sprite_atlas.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self.tile_prog["tile_map"] = 0
        self.tile_prog["tile_atlas"] = 1
        self.tile_prog["map_tiles"] = (W, H)
        self.tile_prog["tile"] = T
        self.tile_prog["wall_kind"] = art.WALL
        self.sprite_prog["sprite_atlas"] = 2
        self.sprite_prog["sprite"] = T
        self.fbos: dict[int, tuple[moderngl.Framebuffer, np.ndarray]] = {}

    def _fbo(self, size: int) -> tuple[moderngl.Framebuffer, np.ndarray]:
        if size not in self.fbos:
            fbo = self.ctx.framebuffer(color_attachments=[self.ctx.renderbuffer((size, size), 3)])
            self.fbos[size] = (fbo, np.empty((size, size, 3), np.uint8))
        return self.fbos[size]

    def _ensure_instances(self, n: int) -> None:
        if n <= self.max_sprites:
            return
        self.max_sprites = max(n, 2 * self.max_sprites, 16)
        if self.inst_vbo is not None:
            self.inst_vbo.release()
            assert self.sprite_vao is not None
            self.sprite_vao.release()
        self.inst_vbo = self.ctx.buffer(reserve=self.max_sprites * 12)
        self.sprite_vao = self.ctx.vertex_array(self.sprite_prog, [
            (self.corner_vbo, "2f", "in_corner"), (self.inst_vbo, "3f/i", "in_sprite")])

    def render(self, size: int, cam: tuple[float, float], view: float, sprites: np.ndarray) -> np.ndarray:
        """Render the view with top-left world pixel ``cam``; ``sprites`` rows are (x, y, index)."""
        fbo, out = self._fbo(size)
        fbo.use()
        px = view / size
        self.map_tex.use(0)
        self.tile_atlas.use(1)
        self.sprite_atlas.use(2)
        self.tile_prog["cam"] = cam
        self.tile_prog["px"] = px
        self.tile_vao.render(moderngl.TRIANGLE_STRIP)
        n = len(sprites)
        if n:
            self._ensure_instances(n)
            assert self.inst_vbo is not None and self.sprite_vao is not None
            self.inst_vbo.write(np.ascontiguousarray(sprites, dtype="f4").tobytes())
            self.sprite_prog["cam"] = cam
            self.sprite_prog["px"] = px
            self.sprite_prog["frame_size"] = (size, size)
            self.sprite_vao.render(moderngl.TRIANGLE_STRIP, instances=n)
        fbo.read_into(out, components=3)
        return out

    def release(self) -> None:
        for obj in (self.tile_prog, self.sprite_prog, self.quad_vbo, self.corner_vbo, self.tile_vao,
                    self.map_tex, self.tile_atlas, self.sprite_atlas, self.inst_vbo, self.sprite_vao):
            if obj is not None:
                obj.release()
        for fbo, _ in self.fbos.values():
            fbo.release()
        self.fbos.clear()


# ---------------------------------------------------------------------- the world
class AdventureWorld(World):
    name = "adventure"
    supports_state = True
    action_names = ("NOOP", "UP", "DOWN", "LEFT", "RIGHT")
    tick_rate = 15.0
    keymap_name = "adventure"

    COIN_REWARD = 1.0
    LAVA_REWARD = -1.0

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings: AdventureSettings = settings_from_kwargs(AdventureSettings, settings, self.name)
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
        """Walkable tiles reachable from the start (the denominator of map coverage)."""
        return self._num_cells

    def _index_map(self, tiles: np.ndarray, creatures: np.ndarray) -> None:
        """Flat Python lookups used by the per-step logic."""
        H, W = tiles.shape
        self._map_w, self._map_w_px, self._map_h_px = W, W * T, H * T
        self._solid = art.SOLID[tiles].ravel().tolist()
        self._hazard = art.HAZARD[tiles].ravel().tolist()
        R = self.settings.room_tiles
        self._croom = [int(ty // R) * self.settings.rooms_x + int(tx // R) for tx, ty in creatures]
        members: dict[int, list[int]] = {}
        for i, room in enumerate(self._croom):
            members.setdefault(room, []).append(i)
        self._room_members = members
        RP = R * T  # creatures stay inside their room, off the border walls
        self._croom_box = {room: ((room % self.settings.rooms_x) * RP + T, (room // self.settings.rooms_x) * RP + T,
                                  (room % self.settings.rooms_x + 1) * RP - 2 * T,
                                  (room // self.settings.rooms_x + 1) * RP - 2 * T)
                           for room in members}

    @property
    def map_tiles(self) -> np.ndarray:
        return self._tiles.copy()

    # ------------------------------------------------------------ reset / step
    def _reset(self, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        s = self.settings
        gen_rng = np.random.default_rng([seed, 0])
        if seed != self._map_seed or self._renderer is None:
            tiles, coins, creatures, start = generate_map(s, gen_rng)
            self._base_tiles = tiles
            self._coin_tiles = coins
            self._creature_tiles = creatures
            self._start = start
            self._num_cells = reachable_tiles(tiles, start)
            self._index_map(tiles, creatures)
            self._coin_rows = np.concatenate(
                [coins * T, np.full((len(coins), 1), art.COIN)], 1).astype(np.float32)
            if self._renderer is not None:
                self._renderer.release()
            self._renderer = _Renderer(get_context(), tiles)
            self._map_seed = seed
        self._tiles = self._base_tiles.copy()
        self._rng = np.random.default_rng([seed, 1])
        self._px = self._start[0] * T
        self._py = self._start[1] * T
        self._facing = 0
        self._walked = 0
        self._coins = np.ones(len(self._coin_tiles), bool)
        self._cx = [int(x) * T for x in self._creature_tiles[:, 0]]
        self._cy = [int(y) * T for y in self._creature_tiles[:, 1]]
        self._cdir = self._rng.integers(0, 4, size=len(self._cx)).tolist()
        self._score = 0.0
        frame = self._render_frame()
        return frame, self._make_info(NOOP)

    def _step(self, action: int) -> StepResult:
        moved = False
        if action != NOOP:
            self._facing = FACING_OF_ACTION[action]
            dx, dy = DIRS[action]
            moved = self._move_player(dx * self.settings.speed, dy * self.settings.speed)
            if moved:
                self._walked += self.settings.speed
        self._move_creatures()
        reward = self._collect_coins()
        terminated = False
        cx, cy = self._player_tile()
        if self._hazard[cy * self._map_w + cx]:
            reward += self.LAVA_REWARD
            terminated = True
        elif len(self._coins) and not self._coins.any():
            terminated = True  # every coin collected: the world is won
        self._score += reward
        truncated = not terminated and self._steps + 1 >= self.settings.max_steps
        frame = self._render_frame()
        info = self._make_info(action if moved else NOOP)
        info["events"] = "lava" if terminated and reward < 0 else ""
        return StepResult(frame, float(reward), terminated, truncated, info)

    # ------------------------------------------------------------ mechanics
    # Per-step logic uses plain Python ints and lists: for a handful of objects that is
    # several times faster than numpy calls, and the engine must run at >2,000 steps/s.
    def _solid_box(self, x: int, y: int) -> bool:
        """Does an 8x8 box at world pixel (x, y) overlap a solid tile or leave the map?"""
        if x < 0 or y < 0 or x + T > self._map_w_px or y + T > self._map_h_px:
            return True
        solid, W = self._solid, self._map_w
        tx0, ty0, tx1, ty1 = x // T, y // T, (x + T - 1) // T, (y + T - 1) // T
        return (solid[ty0 * W + tx0] or solid[ty0 * W + tx1] or solid[ty1 * W + tx0]
                or solid[ty1 * W + tx1])

    def _player_blocked(self, x: int, y: int) -> bool:
        if self._solid_box(x, y):
            return True
        for cx, cy in zip(self._cx, self._cy):
            if abs(cx - x) < T and abs(cy - y) < T:
                return True
        return False

    def _creature_blocked(self, i: int, x: int, y: int) -> bool:
        if self._solid_box(x, y) or (abs(self._px - x) < T and abs(self._py - y) < T):
            return True
        cx, cy = self._cx, self._cy
        for j in self._room_members[self._croom[i]]:
            if j != i and abs(cx[j] - x) < T and abs(cy[j] - y) < T:
                return True
        return False

    def _move_player(self, dx: int, dy: int) -> bool:
        """Move up to (dx, dy) pixel by pixel, stopping flush against obstacles."""
        steps = max(abs(dx), abs(dy))
        sx, sy = (dx > 0) - (dx < 0), (dy > 0) - (dy < 0)
        moved = False
        for _ in range(steps):
            if self._player_blocked(self._px + sx, self._py + sy):
                break
            self._px += sx
            self._py += sy
            moved = True
        return moved

    def _move_creatures(self) -> None:
        n = len(self._cx)
        if not n:
            return
        turn = (self._rng.random(n) < 0.08).tolist()
        new_dirs = self._rng.integers(0, 4, size=n).tolist()
        for i in range(n):
            if turn[i]:
                self._cdir[i] = new_dirs[i]
            dx, dy = _CREATURE_STEPS[self._cdir[i]]
            nx, ny = self._cx[i] + dx, self._cy[i] + dy
            x0, y0, x1, y1 = self._croom_box[self._croom[i]]
            if x0 <= nx <= x1 and y0 <= ny <= y1 and not self._creature_blocked(i, nx, ny) \
                    and not self._lava_at(nx, ny):
                self._cx[i], self._cy[i] = nx, ny
            else:
                self._cdir[i] = new_dirs[i]  # bumped: a new direction

    def _lava_at(self, x: int, y: int) -> bool:
        return self._hazard[((y + T // 2) // T) * self._map_w + (x + T // 2) // T]

    def _player_tile(self) -> tuple[int, int]:
        return (self._px + T // 2) // T, (self._py + T // 2) // T

    def _collect_coins(self) -> float:
        if not len(self._coins):
            return 0.0
        cx, cy = self._coin_tiles[:, 0] * T, self._coin_tiles[:, 1] * T
        hit = self._coins & (np.abs(cx - self._px) < T - 2) & (np.abs(cy - self._py) < T - 2)
        n = int(hit.sum())
        if n:
            self._coins[hit] = False
        return self.COIN_REWARD * n

    # ------------------------------------------------------------ rendering
    def _camera(self, view: float) -> tuple[float, float]:
        s = self.settings
        H, W = self._tiles.shape
        if s.camera == "follow":
            lo_x, lo_y, hi_x, hi_y = 0.0, 0.0, float(W * T), float(H * T)
            cx = self._px + T / 2 - view / 2
            cy = self._py + T / 2 - view / 2
        else:
            R = s.room_tiles * T
            rx, ry = ((self._px + T // 2) // R) * R, ((self._py + T // 2) // R) * R
            lo_x, lo_y, hi_x, hi_y = float(rx), float(ry), float(rx + R), float(ry + R)
            if view >= R:  # the room fits: centre it
                return rx + (R - view) / 2, ry + (R - view) / 2
            cx = self._px + T / 2 - view / 2
            cy = self._py + T / 2 - view / 2
        cx = min(max(cx, lo_x), hi_x - view)
        cy = min(max(cy, lo_y), hi_y - view)
        return float(np.floor(cx)), float(np.floor(cy))

    def _sprites(self) -> np.ndarray:
        """(N, 3) float32 rows (x, y, atlas index): coins, creatures, then the player on top."""
        anim = (self._walked // 4) % 2
        canim = art.CREATURE_BASE + (self._steps // 6) % 2
        n_c = len(self._cx)
        rows = np.empty((n_c + 1, 3), np.float32)
        rows[:n_c, 0] = self._cx
        rows[:n_c, 1] = self._cy
        rows[:n_c, 2] = canim
        rows[n_c] = (self._px, self._py, art.PLAYER_BASE + 2 * self._facing + anim)
        return np.concatenate([self._coin_rows[self._coins], rows])

    def _render_frame(self, size: int | None = None) -> np.ndarray:
        assert self._renderer is not None
        view = self.settings.view
        size = size or self.settings.resolution
        frame = self._renderer.render(size, self._camera(view), view, self._sprites()).copy()
        if size == self.settings.resolution:
            self._frame = frame
        return frame

    def render(self, size: int | None = None) -> np.ndarray:
        if self._frame is None:
            raise RuntimeError("call reset() before render()")
        if size is None or size == self.settings.resolution:
            return self._frame.copy()
        return self._render_frame(size)

    def content_map(self) -> np.ndarray | None:
        """World pixel index (y * map_width_px + x) shown at each frame pixel."""
        if self._frame is None:
            return None
        view, R = self.settings.view, self.settings.resolution
        cx, cy = self._camera(view)
        coords = np.floor((np.arange(R) + 0.5) * (view / R)).astype(np.int64)
        wx = int(cx) + coords
        wy = int(cy) + coords
        width = self._tiles.shape[1] * T
        return wy[:, None] * width + wx[None, :]

    def player_frame_pos(self) -> tuple[float, float]:
        """The player's centre in frame pixels."""
        view = self.settings.view
        cx, cy = self._camera(view)
        k = self.settings.resolution / view
        return ((self._px + T / 2 - cx) * k, (self._py + T / 2 - cy) * k)

    def creatures_frame_pos(self) -> np.ndarray:
        """(N, 2) centres in frame pixels of the creatures whose sprite centre is inside the frame."""
        view = self.settings.view
        cx, cy = self._camera(view)
        k = self.settings.resolution / view
        pos = np.array([((x + T / 2 - cx) * k, (y + T / 2 - cy) * k) for x, y in zip(self._cx, self._cy)],
                       np.float64).reshape(-1, 2)
        R = self.settings.resolution
        inside = (pos[:, 0] >= 0) & (pos[:, 0] < R) & (pos[:, 1] >= 0) & (pos[:, 1] < R)
        return pos[inside]

    def _make_info(self, effective: int) -> dict[str, Any]:
        return {
            "effective_action": effective,
            "player_pos": self.player_frame_pos(),
            "player_world": (int(self._px), int(self._py)),
            "facing": art.FACINGS[self._facing],
            "cell": self._player_tile(),
            "room": (int((self._px + T // 2) // (self.settings.room_tiles * T)),
                     int((self._py + T // 2) // (self.settings.room_tiles * T))),
            "score": float(self._score),
            "coins_left": int(self._coins.sum()),
        }

    # ------------------------------------------------------------ state
    def get_state(self) -> dict[str, Any]:
        if self._renderer is None:
            raise RuntimeError("call reset() before get_state()")
        return {
            **self._base_state(),
            "map_seed": self._map_seed,
            "px": self._px, "py": self._py, "facing": self._facing, "walked": self._walked,
            "coins": self._coins.copy(),
            "cx": list(self._cx), "cy": list(self._cy), "cdir": list(self._cdir),
            "rng": self._rng.bit_generator.state,
            "score": self._score,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        seed = int(state["map_seed"])
        if seed != self._map_seed:
            self._reset(seed)  # regenerate the map of that seed, then overwrite the dynamics
        self._restore_base_state(state)
        self._px, self._py = int(state["px"]), int(state["py"])
        self._facing, self._walked = int(state["facing"]), int(state["walked"])
        self._coins = np.array(state["coins"], bool)
        self._cx = [int(v) for v in state["cx"]]
        self._cy = [int(v) for v in state["cy"]]
        self._cdir = [int(v) for v in state["cdir"]]
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]
        self._score = float(state["score"])
        self._frame = None
        self._render_frame()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.release()
            self._renderer = None
            self._map_seed = None


# ---------------------------------------------------------------------- measurement helpers
def find_creatures(frame: np.ndarray, positions: np.ndarray, radius: float = 3.0, tol: float = 60.0,
                   min_pixels: int = 2) -> np.ndarray:
    """(N,) bool: is a creature drawn at each of ``positions`` (frame pixels) in ``frame`` (real or
    generated)? At least ``min_pixels`` pixels of a creature colour within ``radius`` pixels of the
    position (a 64-pixel frame draws a creature about 4 pixels wide)."""
    f = frame.astype(np.int32)
    mask = np.zeros(f.shape[:2], bool)
    for name in ("creature", "creature_light"):
        mask |= ((f - np.array(art.PALETTE[name], np.int32)) ** 2).sum(-1) <= tol * tol
    H, W = mask.shape
    found = np.zeros(len(positions), bool)
    for i, (x, y) in enumerate(np.asarray(positions, np.float64).reshape(-1, 2)):
        x0, x1 = max(0, int(np.floor(x - radius))), min(W, int(np.ceil(x + radius)) + 1)
        y0, y1 = max(0, int(np.floor(y - radius))), min(H, int(np.ceil(y + radius)) + 1)
        found[i] = mask[y0:y1, x0:x1].sum() >= min_pixels
    return found


def find_player(frame: np.ndarray, tol: float = 60.0, min_pixels: int = 4) -> tuple[float, float] | None:
    """Locate the player in a frame (real or generated) by its unique tunic colour.

    Returns the centre of the tunic's bounding box in frame pixels, shifted to the
    sprite's centre (the tunic sits in rows 4..6 of the 8-row sprite), or None if fewer
    than ``min_pixels`` pixels match. Works at any scale: the offset is relative.
    """
    f = frame.astype(np.int32)
    target = np.array(art.PALETTE["tunic"], np.int32)
    mask = ((f - target) ** 2).sum(-1) <= tol * tol
    if mask.sum() < min_pixels:
        return None
    ys, xs = np.nonzero(mask)
    # the tunic spans sprite rows 4..6: its centre row is 5.5/8 of the sprite height down
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    h = (y1 - y0) / 3.0 * 8.0  # sprite height from the tunic's 3 rows
    return (float((x0 + x1) / 2), float((y0 + y1) / 2 - (5.5 / 8.0 - 0.5) * h))


# the adventure's evaluation capabilities (world.core.World.find_player / find_creatures)
AdventureWorld.find_player = staticmethod(find_player)
AdventureWorld.find_creatures = staticmethod(find_creatures)
