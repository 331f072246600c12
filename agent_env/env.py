"""Gymnasium environments over any World, and their registration.

:class:`WorldEnv` turns a :class:`world.World` (a built-in game, an adapted Gymnasium game,
later a dreamed world) into a ``gymnasium.Env`` with image observations and discrete
actions. The env is built from a world *name* (or a World factory) plus settings, and
creates its world itself, so it can be rebuilt in a vector env's subprocess; the world
touches OpenGL only through ``world.gl``, whose context is per process.

Registered ids (on ``import agent_env``):

- ``dreamstep/Adventure-v0``, ``dreamstep/Maze3D-v0``: the built-in games;
- ``dreamstep/World-v0``: any world, named by the ``world`` kwarg, e.g.
  ``gym.make("dreamstep/World-v0", world="gym:ALE/Breakout-v5")``.

Async vector envs: the workers build their own worlds (and GL contexts). A process that
has rendered already must not *fork* them, since the GL driver's threads do not survive
a fork (llvmpipe then hangs on the first frame): pass
``vector_kwargs={"context": "forkserver"}`` to ``gym.make_vec`` in that case.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from world import BUILTIN_WORLDS, GYM_PREFIX, UnknownWorldError, World, list_worlds, make_world

NAMESPACE = "dreamstep"
ENTRY_POINT = "agent_env.env:WorldEnv"
#: the generic id: any world, given as the ``world`` kwarg
WORLD_ENV_ID = f"{NAMESPACE}/World-v0"
#: the dream of the shipped default checkpoint (any checkpoint: make_dream_env(checkpoint=...))
DREAM_ENV_ID = f"{NAMESPACE}/AdventureDream-v0"
DREAM_VECTOR_ENTRY_POINT = "agent_env.dream_vec:DreamVectorEnv"
#: the TimeLimit of the built-in games' registered ids
DEFAULT_MAX_EPISODE_STEPS = 1000
#: side of the "human" window when no ``render_size`` is given
DEFAULT_WINDOW_SIZE = 512
#: how a built-in world's name reads in its env id (others are capitalised)
_GAME_NAMES = {"adventure": "Adventure", "maze3d": "Maze3D"}
#: SDL's hint for drawing a plain window's surface through a GL renderer of its own
_SDL_FB_ACCELERATION = "SDL_FRAMEBUFFER_ACCELERATION"

WorldSpec = str | Callable[..., World]


class NoDisplayError(RuntimeError):
    """``render_mode="human"`` was asked for where no window can open."""


class WorldEnv(gym.Env[np.ndarray, np.int64]):
    """A Gymnasium env over one World: frames in, action indices out.

    Args:
        world: a world name for :func:`world.make_world` (``"adventure"``,
            ``"gym:ALE/Breakout-v5"``, ...) or a callable returning a World (e.g. a World
            subclass); it is called with ``settings``.
        render_mode: ``None``, ``"rgb_array"`` (``render()`` returns the current frame) or
            ``"human"`` (a pygame window, updated on every reset and step at ``render_fps``;
            it needs a display, as ``play.py``'s window does: without one, making the env
            raises :class:`NoDisplayError`).
        render_size: side of the rendered frames; ``None`` means the observation's size
            for ``"rgb_array"`` and a 512-pixel window for ``"human"``. Worlds that can
            re-render at any size (``world.render(size)``) draw sharp frames; others are
            upscaled by pixel repetition.
        **settings: the world's settings (strict: an unknown key is an error).

    Seeding follows Gymnasium: ``reset(seed=s)`` reseeds ``self.np_random`` and every
    reset draws the world's seed from it, so a seeded reset followed by unseeded ones is
    reproducible. ``reset(options={"world_seed": n})`` starts the world at seed ``n``
    exactly (e.g. to replay a recorded episode). ``info`` is the world's info plus, on
    reset, ``"world_seed"``.
    """

    metadata: dict[str, Any] = {"render_modes": ["human", "rgb_array"], "render_fps": 15}

    def __init__(
        self,
        world: WorldSpec | None = None,
        render_mode: str | None = None,
        render_size: int | None = None,
        **settings: Any,
    ) -> None:
        if world is None:
            raise ValueError("dreamstep/World-v0 needs the world to play: gym.make('dreamstep/World-v0', "
                             "world='adventure') (or 'maze3d', 'gym:ALE/Breakout-v5', ...); the registered "
                             "dreamstep/Adventure-v0 and dreamstep/Maze3D-v0 name theirs")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        if render_size is not None and (not isinstance(render_size, int) or render_size < 1):
            raise ValueError(f"render_size must be a positive int or None, got {render_size!r}")
        if render_mode == "human":
            _init_display()  # before the world: no display, no env (and nothing to clean up)
        try:
            self.world = _build_world(world, settings)
        except BaseException:
            if render_mode == "human":
                import pygame

                pygame.display.quit()
            raise
        self.observation_space = spaces.Box(0, 255, self.world.frame_shape, np.uint8)
        self.action_space = spaces.Discrete(self.world.num_actions)
        self.metadata = {**type(self).metadata, "render_fps": self.world.tick_rate}
        self.render_mode = render_mode
        self.render_size = render_size
        self._frame: np.ndarray | None = None
        self._window: Any = None  # pygame Surface of the "human" window
        self._clock: Any = None
        self._saved_fb_hint: str | None = None  # the user's SDL hint, while the window is open

    # ------------------------------------------------------------------ gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        world_seed = int(self.np_random.integers(2**31))
        options = dict(options or {})
        if "world_seed" in options:
            world_seed = options.pop("world_seed")
        if options:
            raise ValueError(f"unknown reset option(s) {sorted(options)}; valid: ['world_seed']")
        frame, info = self.world.reset(seed=world_seed)
        info["world_seed"] = world_seed
        self._frame = frame
        if self.render_mode == "human":
            self._render_human()
        return frame, _copy_info(info)

    def step(self, action: int | np.integer) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        frame, reward, terminated, truncated, info = self.world.step(action)
        self._frame = frame
        if self.render_mode == "human":
            self._render_human()
        return frame, float(reward), bool(terminated), bool(truncated), _copy_info(info)

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn(
                "render() was called without a render_mode; pass render_mode='rgb_array' "
                "or 'human' when making the env, e.g. gym.make(id, render_mode='rgb_array')"
            )
            return None
        if self.render_mode == "rgb_array":
            return self._display_frame(self.render_size)
        self._render_human()
        return None

    def close(self) -> None:
        if self.render_mode == "human":
            import pygame

            pygame.display.quit()
            if self._window is not None:
                _restore_env(_SDL_FB_ACCELERATION, self._saved_fb_hint)
            self._window = None
            self._clock = None
        self.world.close()

    def get_action_meanings(self) -> list[str]:
        """The world's action names, indexed by action (Atari's convention)."""
        return list(self.world.action_names)

    # ------------------------------------------------------------------ rendering
    def _display_frame(self, size: int | None) -> np.ndarray:
        """The current frame at ``size`` x ``size`` (the observation itself if None)."""
        if self._frame is None:
            raise gym.error.ResetNeeded("call reset() before render()")
        if size is None or self._frame.shape[:2] == (size, size):
            return self._frame.copy()
        try:
            return self.world.render(size)
        except NotImplementedError:  # the world cannot re-render: repeat pixels instead
            rows = np.arange(size) * self._frame.shape[0] // size
            cols = np.arange(size) * self._frame.shape[1] // size
            return self._frame[rows[:, None], cols[None, :]]

    def _render_human(self) -> None:
        import pygame

        frame = self._display_frame(self.render_size or DEFAULT_WINDOW_SIZE)
        if self._window is None:
            pygame.display.init()  # again, if a close() or another window quit it since make
            # A plain software surface, never one SDL draws through a GL renderer of its own
            # (its default on X11 and its offscreen driver): SDL would make a GLX or EGL
            # context current on this thread, beside the worlds' EGL context (world.gl), and
            # Xlib aborts the process on GLXMakeCurrent (BadAccess). Kept while the window is
            # open, since SDL reads it whenever it remakes the window's surface.
            self._saved_fb_hint = os.environ.get(_SDL_FB_ACCELERATION)
            os.environ[_SDL_FB_ACCELERATION] = "0"
            try:
                self._window = pygame.display.set_mode((frame.shape[1], frame.shape[0]))
            except BaseException:
                _restore_env(_SDL_FB_ACCELERATION, self._saved_fb_hint)
                raise
            pygame.display.set_caption(f"dreamstep: {self.world.name}")
            self._clock = pygame.time.Clock()
        pygame.surfarray.blit_array(self._window, frame.swapaxes(0, 1))
        pygame.event.pump()  # keep the window responsive
        pygame.display.flip()
        self._clock.tick(self.metadata["render_fps"])


def _init_display() -> None:
    """Initialise pygame's display for a "human" window; :class:`NoDisplayError` if there is none.

    Where ``play.py`` would play headless (no ``DISPLAY``, ``SDL_VIDEODRIVER=dummy``, or SDL
    falling back to a driver without windows), so does this refuse. A window there shows
    nothing, and SDL's offscreen driver draws it with an EGL renderer on the process's EGL
    display, which, once closed, leaves every GL program made later in the process failing.
    """
    import pygame

    from world.gl import no_display_reason

    reason = no_display_reason()
    if reason is None:
        try:
            pygame.display.init()
        except pygame.error as e:
            reason = f"SDL could not open the display: {e}"
        else:
            driver = pygame.display.get_driver()
            if driver in ("dummy", "offscreen"):
                pygame.display.quit()
                reason = f"SDL fell back to its {driver!r} video driver, which has no windows"
    if reason is not None:
        raise NoDisplayError(
            f"render_mode='human' opens a window, and there is no display here ({reason}); "
            f"use render_mode='rgb_array' and take the frames from env.render() (or run under "
            f"a display, e.g. xvfb-run)"
        )


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _build_world(world: WorldSpec, settings: dict[str, Any]) -> World:
    if isinstance(world, str):
        return make_world(world, **settings)
    if not callable(world):
        raise TypeError(
            f"world must be a world name (see world.list_worlds()) or a callable returning a "
            f"World, got {world!r} ({type(world).__name__})"
        )
    built = world(**settings)
    if not isinstance(built, World):
        raise TypeError(f"world factory {world!r} returned {type(built).__name__}, not a World")
    return built


def _copy_info(info: dict[str, Any]) -> dict[str, Any]:
    """A fresh info dict, so that no two returned infos share a mutable object."""
    return {k: copy.deepcopy(v) if isinstance(v, (np.ndarray, dict, list)) else v
            for k, v in info.items()}


# ---------------------------------------------------------------------- registration
def env_id_for(world_name: str, variant: str = "") -> str:
    """The env id of a built-in world, e.g. ``env_id_for("maze3d") == "dreamstep/Maze3D-v0"``.

    ``variant`` is appended to the game's name (``"Dream"`` gives
    ``"dreamstep/AdventureDream-v0"``).
    """
    return f"{NAMESPACE}/{_GAME_NAMES.get(world_name, world_name.capitalize())}{variant}-v0"


def register_builtin_envs() -> None:
    """Register every built-in game and the generic id; safe to call again."""
    for name in BUILTIN_WORLDS:
        register_world(env_id_for(name), name, max_episode_steps=DEFAULT_MAX_EPISODE_STEPS)
    if WORLD_ENV_ID not in gym.registry:
        gym.register(WORLD_ENV_ID, entry_point=ENTRY_POINT)
    if DREAM_ENV_ID not in gym.registry:  # the shipped default dream; make_vec batches it in one forward
        gym.register(DREAM_ENV_ID, entry_point=ENTRY_POINT, vector_entry_point=DREAM_VECTOR_ENTRY_POINT,
                     kwargs={"world": "dream"}, max_episode_steps=DEFAULT_MAX_EPISODE_STEPS)


def make_dream_env(checkpoint: str | None = None, **kwargs: Any) -> gym.Env:
    """A single dream env of any world-model checkpoint (default: the shipped default dream);
    ``kwargs`` are dream settings (steps, sampler, heads, ...) and gym.make's own."""
    if checkpoint is not None:
        kwargs["checkpoint"] = checkpoint
    return gym.make(DREAM_ENV_ID, **kwargs)


def register_world(
    env_id: str, world: WorldSpec, *, max_episode_steps: int | None = None, **settings: Any
) -> str:
    """Register ``env_id`` as a :class:`WorldEnv` over ``world`` with ``settings``.

    Registering the same id again with the same arguments does nothing; with different
    ones it is an error (pick a new id or version). Returns ``env_id``.

    >>> register_world("mine/BigAdventure-v0", "adventure", rooms_x=8, rooms_y=8)
    'mine/BigAdventure-v0'
    """
    if isinstance(world, str):
        _check_world_name(world)
    kwargs = {"world": world, **settings}
    existing = gym.registry.get(env_id)
    if existing is not None:
        same = (existing.entry_point == ENTRY_POINT and existing.kwargs == kwargs
                and existing.max_episode_steps == max_episode_steps)
        if same:
            return env_id
        raise ValueError(
            f"env id {env_id!r} is already registered (entry point {existing.entry_point!r}, "
            f"kwargs {existing.kwargs}, max_episode_steps {existing.max_episode_steps}); "
            f"register these settings under another id or version, e.g. '...-v1'"
        )
    gym.register(env_id, entry_point=ENTRY_POINT, kwargs=kwargs,
                 max_episode_steps=max_episode_steps)
    return env_id


def make_env(world_name_or_gym_id: str, **kwargs: Any) -> gym.Env:
    """Make a dreamstep env by world name, ``"gym:<id>"`` or registered dreamstep env id.

    ``kwargs`` are world settings plus ``gym.make``'s own (``render_mode``,
    ``render_size``, ``max_episode_steps``, ...):

    >>> env = make_env("adventure", camera="room", render_mode="rgb_array")
    >>> env = make_env("gym:ALE/Breakout-v5")
    >>> env = make_env("dreamstep/Maze3D-v0")
    """
    name = world_name_or_gym_id
    if name in BUILTIN_WORLDS:
        return gym.make(env_id_for(name), **kwargs)
    if name.startswith(GYM_PREFIX):
        return gym.make(WORLD_ENV_ID, world=name, **kwargs)
    spec = gym.registry.get(name)
    if spec is not None and spec.entry_point == ENTRY_POINT:
        return gym.make(name, **kwargs)
    hint = (f" ({name!r} is a plain Gymnasium env: adapt it as '{GYM_PREFIX}{name}')"
            if spec is not None else "")
    raise UnknownWorldError(
        f"unknown world {name!r}{hint}; valid: a built-in world {list_worlds()}, "
        f"'{GYM_PREFIX}<gymnasium id>' (e.g. 'gym:ALE/Breakout-v5'), or a dreamstep env id "
        f"{registered_env_ids()}"
    )


def registered_env_ids() -> list[str]:
    """Every registered id whose env is a :class:`WorldEnv`."""
    return sorted(i for i, s in gym.registry.items() if s.entry_point == ENTRY_POINT)


def _check_world_name(name: str) -> None:
    if name not in BUILTIN_WORLDS and not name.startswith(GYM_PREFIX):
        make_world(name)  # raises UnknownWorldError, which lists the valid worlds
