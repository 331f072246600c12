"""Pixel art for the adventure world, drawn by code: 8x8 tiles and sprites in flat clear colours.

Every object that matters is a full 8x8 world pixels (one tile). Colours are chosen so that
the player's tunic colour appears nowhere else: :func:`world.adventure.find_player` finds
the player in any frame, real or generated, by that colour alone.
"""

from __future__ import annotations

import numpy as np

T = 8  # tile and sprite size in world pixels

# tile kinds (index into the tile atlas)
GRASS, GRASS_TUFT, SAND, DOOR_FLOOR, WALL, TREE, WATER, LAVA = range(8)
TILE_NAMES = ("grass", "grass_tuft", "sand", "door_floor", "wall", "tree", "water", "lava")
SOLID = np.zeros(len(TILE_NAMES), bool)
SOLID[[WALL, TREE, WATER]] = True
HAZARD = np.zeros(len(TILE_NAMES), bool)
HAZARD[LAVA] = True

PALETTE = {
    "grass": (92, 170, 76),
    "grass_dark": (64, 132, 56),
    "sand": (226, 204, 142),
    "sand_dark": (196, 172, 112),
    "stone": (150, 150, 160),
    "stone_dark": (92, 92, 104),
    "door": (176, 140, 96),
    "door_dark": (140, 106, 70),
    "tree": (34, 110, 48),
    "tree_light": (60, 150, 64),
    "trunk": (110, 70, 36),
    "water": (48, 104, 216),
    "water_light": (120, 170, 248),
    "lava": (226, 72, 20),
    "lava_light": (250, 190, 40),
    "tunic": (250, 250, 250),     # the player's unique colour
    "hat": (214, 40, 40),
    "skin": (246, 196, 150),
    "ink": (24, 24, 32),
    "coin": (250, 210, 30),
    "coin_light": (255, 246, 170),
    "creature": (150, 56, 196),
    "creature_light": (196, 120, 236),
}


def _c(name: str) -> np.ndarray:
    return np.array(PALETTE[name], np.uint8)


def _tile(base: str) -> np.ndarray:
    img = np.empty((T, T, 3), np.uint8)
    img[:] = _c(base)
    return img


def tile_atlas() -> np.ndarray:
    """(T, T * n_kinds, 3) uint8: tile kinds side by side, in kind order."""
    tiles = []
    g = _tile("grass")
    tiles.append(g)
    tuft = g.copy()
    for y, x in ((2, 1), (1, 2), (2, 3), (5, 5), (4, 6), (5, 7)):
        tuft[y, x] = _c("grass_dark")
    tiles.append(tuft)
    sand = _tile("sand")
    for y, x in ((1, 1), (3, 5), (6, 2), (6, 6)):
        sand[y, x] = _c("sand_dark")
    tiles.append(sand)
    door = _tile("door")
    door[:, 0] = door[:, 7] = _c("door_dark")
    door[3, :] = door[7, :] = _c("door_dark")
    tiles.append(door)
    wall = _tile("stone")
    wall[3, :] = wall[7, :] = _c("stone_dark")
    wall[0:3, 3] = wall[4:7, 7] = _c("stone_dark")
    tiles.append(wall)
    tree = _tile("grass")
    yy, xx = np.mgrid[0:T, 0:T]
    crown = (xx - 3.5) ** 2 + (yy - 3.0) ** 2 <= 12.5
    tree[crown] = _c("tree")
    tree[(xx - 2.5) ** 2 + (yy - 2.0) ** 2 <= 1.6] = _c("tree_light")
    tree[6:8, 3:5] = _c("trunk")
    tiles.append(tree)
    water = _tile("water")
    water[2, 1:4] = water[5, 4:7] = _c("water_light")
    tiles.append(water)
    lava = _tile("lava")
    lava[1:3, 1:3] = lava[4:6, 5:7] = lava[6, 1] = _c("lava_light")
    tiles.append(lava)
    return np.concatenate(tiles, axis=1)


# sprite atlas layout
FACINGS = ("down", "up", "left", "right")
PLAYER_BASE = 0       # index = PLAYER_BASE + 2 * facing + anim_frame
COIN = 8
CREATURE_BASE = 9     # + anim_frame


def _player(facing: str, frame: int) -> np.ndarray:
    s = np.zeros((T, T, 4), np.uint8)

    def put(ys: slice | int, xs: slice | int, name: str) -> None:
        s[ys, xs, :3] = _c(name)
        s[ys, xs, 3] = 255

    put(slice(0, 2), slice(1, 7), "hat")
    put(slice(2, 4), slice(1, 7), "skin")
    put(slice(4, 7), slice(0, 8), "tunic")
    # legs alternate with the walk frame
    if frame == 0:
        put(7, slice(1, 3), "ink")
        put(7, slice(5, 7), "ink")
    else:
        put(7, slice(2, 4), "ink")
        put(7, slice(4, 6), "ink")
    if facing == "down":
        put(2, 2, "ink")
        put(2, 5, "ink")
    elif facing == "up":
        put(2, slice(1, 7), "hat")
        put(3, slice(2, 6), "hat")
    elif facing == "left":
        put(2, 1, "ink")
        put(slice(4, 7), 0, "ink")  # shield edge on the facing side
    else:
        put(2, 6, "ink")
        put(slice(4, 7), 7, "ink")
    return s


def _coin() -> np.ndarray:
    s = np.zeros((T, T, 4), np.uint8)
    yy, xx = np.mgrid[0:T, 0:T]
    diamond = np.abs(xx - 3.5) + np.abs(yy - 3.5) <= 4.0
    s[diamond, :3] = _c("coin")
    s[diamond, 3] = 255
    s[(np.abs(xx - 3.5) + np.abs(yy - 3.5) <= 1.5), :3] = _c("coin_light")
    return s


def _creature(frame: int) -> np.ndarray:
    s = np.zeros((T, T, 4), np.uint8)
    yy, xx = np.mgrid[0:T, 0:T]
    top = 1 if frame == 0 else 2
    body = ((xx - 3.5) ** 2 / 16.0 + (yy - 4.5) ** 2 / 12.0 <= 1.0) & (yy >= top)
    s[body, :3] = _c("creature")
    s[body, 3] = 255
    s[top + 1: top + 2, 1:3, :3] = _c("creature_light")
    s[4, 2, :3] = s[4, 5, :3] = _c("ink")
    # feet wobble
    if frame == 0:
        s[7, [1, 6], :3] = _c("creature")
        s[7, [1, 6], 3] = 255
    else:
        s[7, [2, 5], :3] = _c("creature")
        s[7, [2, 5], 3] = 255
    return s


def sprite_atlas() -> np.ndarray:
    """(T, T * 11, 4) uint8 RGBA: player (4 facings x 2 frames), coin, creature (2 frames)."""
    sprites = [_player(f, k) for f in FACINGS for k in (0, 1)]
    sprites.append(_coin())
    sprites += [_creature(0), _creature(1)]
    return np.concatenate(sprites, axis=1)
