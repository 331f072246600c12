"""Any Gymnasium game with image observations as a World ("gym:<env id>").

>>> from world import make_world
>>> w = make_world("gym:ALE/Breakout-v5", resolution=64)
>>> frame, info = w.reset(seed=0)
>>> frame, reward, terminated, truncated, info = w.step("FIRE")

What the adapter does to the env:

- Observations: a ``uint8`` Box image, RGB ``(H, W, 3)`` or grayscale ``(H, W)`` /
  ``(H, W, 1)`` (replicated to three channels), or a Dict holding one (the ``obs_key``
  setting, found automatically for ViZDoom's ``"screen"``). Frames are the native image
  resized to ``resolution`` x ``resolution`` by area averaging (PIL's BOX filter); the
  native image is kept for :meth:`GymWorld.render`.
- Actions: Discrete spaces only. Names come from ``get_action_meanings()`` (ALE), from the
  buttons of each ViZDoom action (``"MOVE_LEFT"``, ``"ATTACK"``, combos joined by ``+``,
  none pressed is ``"NOOP"``), else ``"ACTION_i"``. The env's order is kept: when action 0
  is not a known no-op, :meth:`GymWorld.describe` says so.
- ``frame_skip`` repeats an action k times (rewards summed, the last frame returned) on top
  of whatever the env does itself. ``sticky_actions`` adds the adapter's own stickiness: each
  repeat, with that probability, the previously executed action is executed again.
  ``max_steps`` truncates an episode after that many world steps (the env's own limits
  still apply).
- ALE: the env's frameskip and sticky actions (v5: 4 frames per step, repeat probability
  0.25; ``env_kwargs`` may override them) are kept, but the adapter applies them itself,
  frame by frame exactly as ALE does, on an env made with ``frameskip=1,
  repeat_action_probability=0``: ALE's snapshots leave out the action a sticky frame
  repeats, so this is what makes ``get_state``/``set_state`` exact. All the adapter's
  randomness comes from one generator seeded from ``reset``'s seed.
- ``info`` passes the env's JSON-able scalars through and adds ``"score"`` (episode return).
  ``effective_action`` is the pressed action: an external game cannot tell more.
- State: exact ``get_state``/``set_state`` where the emulator can snapshot itself (ALE);
  elsewhere ``supports_state`` is False and they raise StateNotSupportedError.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Iterable
from typing import Any

import gymnasium
import numpy as np
import yaml
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.wrappers import TimeLimit
from PIL import Image

from world.core import (
    InvalidSettingError,
    StepResult,
    UnknownWorldError,
    World,
    WorldError,
    settings_from_kwargs,
)
from world.keymap import Keymap
from world.paths import KEYMAPS

EXTRA_HINT = "pip install 'dreamstep[games]'"
ALE_FRAME_RATE = 60.0  # Atari frames per second; an ALE env step advances `frameskip` of them
DEFAULT_TICK_RATE = 15.0
IMAGE_KEYS = ("screen", "image", "rgb", "pixels")  # Dict keys tried, in order, without obs_key
_RNG_SALT = 0x57C4  # keeps the adapter's random stream apart from the env's own seeding
_ALE_ACTION = re.compile(r"(UP|DOWN)?(LEFT|RIGHT)?(FIRE)?")


class UnsupportedEnvError(WorldError, ValueError):
    """The env's observation or action space is not one the adapter can wrap."""


class MissingExtraError(WorldError, ImportError):
    """The package that provides the env (ale-py, vizdoom) is not installed."""


@dataclasses.dataclass
class GymSettings:
    resolution: int = 64
    frame_skip: int = 1
    sticky_actions: float = 0.0
    max_steps: int | None = None
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    obs_key: str | None = None

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        checks = [
            (is_int(self.resolution) and 8 <= self.resolution <= 4096,
             f"resolution must be an int in 8..4096, got {self.resolution!r}"),
            (is_int(self.frame_skip) and self.frame_skip >= 1,
             f"frame_skip must be an int >= 1 (env steps per world step), got {self.frame_skip!r}"),
            (isinstance(self.sticky_actions, (int, float)) and 0 <= self.sticky_actions < 1,
             f"sticky_actions must be a probability in [0, 1), got {self.sticky_actions!r}"),
            (self.max_steps is None or (is_int(self.max_steps) and self.max_steps >= 1),
             f"max_steps must be None (the env's own limit) or an int >= 1, "
             f"got {self.max_steps!r}"),
            (isinstance(self.env_kwargs, dict) and all(isinstance(k, str) for k in self.env_kwargs),
             f"env_kwargs must be a dict of keyword arguments for gymnasium.make, "
             f"got {self.env_kwargs!r}"),
            (self.obs_key is None or isinstance(self.obs_key, str),
             f"obs_key must be None (found automatically) or a str, got {self.obs_key!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidSettingError(msg)


# ---------------------------------------------------------------------- making the env
def _import_provider(env_id: str) -> None:
    """Import the package that registers the env's family (ALE, ViZDoom), if it is one."""
    if env_id.startswith("ALE/"):
        module, package = "ale_py", "ale-py"
    elif env_id.startswith("Vizdoom"):
        module, package = "vizdoom.gymnasium_wrapper", "vizdoom"
    else:
        return
    try:
        provider = importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"env {env_id!r} needs {package}, which is not installed ({e}); install the games "
            f"extra: {EXTRA_HINT}"
        ) from e
    if module == "ale_py":
        gymnasium.register_envs(provider)


def _make_env(env: str | EnvSpec, env_kwargs: dict[str, Any],
              overrides: dict[str, Any] | None = None) -> gymnasium.Env:
    env_id = env.id if isinstance(env, EnvSpec) else env
    if isinstance(env, str):
        _import_provider(env)
    try:
        return gymnasium.make(env, **{**env_kwargs, **(overrides or {})})
    except gymnasium.error.UnregisteredEnv as e:
        raise UnknownWorldError(
            f"unknown Gymnasium env {env_id!r}: {e}. Atari games look like 'ALE/Breakout-v5' and "
            f"ViZDoom scenarios like 'VizdoomBasic-v1' (both need {EXTRA_HINT}); any other "
            f"registered id works too (see gymnasium.pprint_registry())"
        ) from e
    except (TypeError, gymnasium.error.Error) as e:
        raise InvalidSettingError(
            f"gymnasium.make({env_id!r}) rejected env_kwargs={env_kwargs!r}: {e}"
        ) from e


def _is_image_box(space: spaces.Space) -> bool:
    return (isinstance(space, spaces.Box) and space.dtype == np.uint8
            and (len(space.shape) == 2 or (len(space.shape) == 3 and space.shape[2] in (1, 3))))


def _image_key(space: spaces.Space, obs_key: str | None, env_id: str) -> str | None:
    """The Dict key of the image observation, or None when the observation is the image."""
    if not isinstance(space, spaces.Dict):
        if obs_key is not None:
            raise InvalidSettingError(
                f"obs_key={obs_key!r} is for Dict observations, but {env_id!r} observes {space}; "
                f"leave obs_key unset"
            )
        return None
    keys = list(space.spaces)
    if obs_key is not None:
        if obs_key not in space.spaces:
            raise InvalidSettingError(
                f"obs_key={obs_key!r} is not in {env_id!r}'s observations; its keys are {keys}"
            )
        return obs_key
    images = [k for k in keys if _is_image_box(space.spaces[k])]
    preferred = [k for k in IMAGE_KEYS if k in images]
    if preferred or len(images) == 1:
        return (preferred or images)[0]
    raise UnsupportedEnvError(
        f"cannot tell which observation of {env_id!r} is the frame: image keys {images} in "
        f"{space}; set obs_key to one of them" if images else
        f"{env_id!r} observes {space}, which holds no uint8 image (H, W, 3), (H, W, 1) or (H, W)"
    )


def _check_image_space(space: spaces.Space, env_id: str) -> None:
    if not _is_image_box(space):
        raise UnsupportedEnvError(
            f"{env_id!r} observes {space}, which is not an image: a World needs a uint8 Box of "
            f"shape (H, W, 3), (H, W, 1) or (H, W), or a Dict holding one (chosen by obs_key)"
        )


def _check_action_space(space: spaces.Space, env_id: str) -> spaces.Discrete:
    if not isinstance(space, spaces.Discrete):
        hint = (" (ViZDoom: use the Discrete variant, e.g. 'VizdoomBasic-v1' rather than "
                "'VizdoomBasic-MultiBinary-v1')" if env_id.startswith("Vizdoom") else "")
        raise UnsupportedEnvError(
            f"{env_id!r} has action space {space}; only Discrete action spaces can be adapted{hint}"
        )
    return space


# ---------------------------------------------------------------------- actions
def _vizdoom_names(unwrapped: Any) -> list[str] | None:
    """One name per ViZDoom Discrete action: its pressed buttons joined by '+', or NOOP."""
    button_map = getattr(unwrapped, "button_map", None)
    game = getattr(unwrapped, "game", None)
    if button_map is None or game is None or not hasattr(game, "get_available_buttons"):
        return None
    buttons = game.get_available_buttons()[getattr(unwrapped, "num_delta_buttons", 0):]
    return ["+".join(b.name for b, on in zip(buttons, combo) if on) or "NOOP"
            for combo in button_map]


def _action_names(env: gymnasium.Env, n: int) -> tuple[str, ...]:
    u = env.unwrapped
    meanings = getattr(u, "get_action_meanings", None)
    names = [str(m).upper() for m in meanings()] if callable(meanings) else _vizdoom_names(u)
    if names is None or len(names) != n or len(set(names)) != n:
        names = [f"ACTION_{i}" for i in range(n)]
    return tuple(names)


def action_parts(name: str) -> frozenset[str]:
    """The elementary inputs an action combines: UPRIGHTFIRE -> {UP, RIGHT, FIRE},
    "MOVE_LEFT+ATTACK" -> {MOVE_LEFT, ATTACK}, NOOP -> {}."""
    if name == "NOOP":
        return frozenset()
    if "+" in name:
        return frozenset(name.split("+"))
    m = _ALE_ACTION.fullmatch(name)
    return frozenset(g for g in m.groups() if g) if m else frozenset((name,))


# ---------------------------------------------------------------------- frames and info
def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) uint8 -> a contiguous (H, W, 3) uint8 copy."""
    a = np.asarray(image, dtype=np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.array(a, dtype=np.uint8, order="C")


def resize_area(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 image resized to size x size by area averaging (deterministic)."""
    if image.shape[:2] == (size, size):
        return image.copy()
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX))


def scalar_info(info: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able scalar entries of an env's info (numpy scalars become Python ones)."""
    out = {}
    for k, v in info.items():
        if isinstance(v, np.generic) and v.shape == ():
            v = v.item()
        if isinstance(v, (bool, int, float, str)):
            out[str(k)] = v
    return out


def _time_limits(env: gymnasium.Env) -> list[TimeLimit]:
    found = []
    while isinstance(env, gymnasium.Wrapper):
        if isinstance(env, TimeLimit):
            found.append(env)
        env = env.env
    return found


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (bool, int, float, str, type(None))):
            out[k] = v
        elif isinstance(v, (tuple, list)) and all(isinstance(x, (bool, int, float)) for x in v):
            out[k] = list(v)
    return out


# ---------------------------------------------------------------------- keymap
def gym_keymap(action_names: Iterable[str]) -> Keymap:
    """assets/keymaps/gym.yaml resolved against a game's actions: every input gets the first
    of its candidate actions that the game has; inputs with none are left out."""
    names = set(action_names)
    data = yaml.safe_load((KEYMAPS / "gym.yaml").read_text()) or {}

    def pick(candidates: str | list[str]) -> str | None:
        listed = [candidates] if isinstance(candidates, str) else candidates
        return next((c.upper() for c in listed if c.upper() in names), None)

    def resolve(table: dict[Any, Any]) -> dict[Any, str]:
        return {k: a for k, c in (table or {}).items() if (a := pick(c)) is not None}

    pad = data.get("gamepad") or {}
    axes = {}
    for k, (neg, pos) in (pad.get("axes") or {}).items():
        a, b = pick(neg), pick(pos)
        if a is not None and b is not None:
            axes[int(k)] = (a, b)
    return Keymap(
        "gym",
        keys={str(k).lower(): a for k, a in resolve(data.get("keys")).items()},
        hat={str(k): a for k, a in resolve(pad.get("hat")).items()},
        axes=axes,
        buttons={int(k): a for k, a in resolve(pad.get("buttons")).items()},
        controls={str(k): str(v).lower() for k, v in (data.get("controls") or {}).items()},
    )


@dataclasses.dataclass(frozen=True)
class AleTiming:
    """An ALE env's own action repeat, which the adapter applies frame by frame."""

    frameskip: int | tuple[int, int]  # frames per env step; a tuple: uniform in [lo, hi)
    repeat_action_probability: float

    @property
    def mean_frames(self) -> float:
        fs = self.frameskip
        return (fs[0] + fs[1] - 1) / 2 if isinstance(fs, tuple) else float(fs)

    @classmethod
    def of(cls, env: gymnasium.Env) -> AleTiming | None:
        """The timing of a freshly made ALE env, or None when the env is not an ALE one."""
        u = env.unwrapped
        ale = getattr(u, "ale", None)
        if not (hasattr(ale, "cloneState") and hasattr(ale, "restoreState")):
            return None
        fs = getattr(u, "_frameskip", 1)
        return cls(tuple(fs) if isinstance(fs, (tuple, list)) else int(fs),
                   float(ale.getFloat("repeat_action_probability")))

    @property
    def is_plain(self) -> bool:
        return self.frameskip == 1 and self.repeat_action_probability == 0.0


# ---------------------------------------------------------------------- the world
class GymWorld(World):
    """A Gymnasium env with image observations and Discrete actions, as a World.

    ``env`` is a registered id (``"ALE/Breakout-v5"``, ``"VizdoomBasic-v1"``, ...) or an
    :class:`~gymnasium.envs.registration.EnvSpec` (for an env class that is not registered).
    """

    keymap_name = "gym"

    def __init__(self, env: str | EnvSpec, **settings: Any) -> None:
        super().__init__()
        self.env_id = env.id if isinstance(env, EnvSpec) else str(env)
        self.name = f"gym:{self.env_id}"
        self.settings: GymSettings = settings_from_kwargs(GymSettings, settings, self.name)
        self._env = _make_env(env, self.settings.env_kwargs)
        self._ale = AleTiming.of(self._env)
        if self._ale is not None and not self._ale.is_plain:  # remake: the adapter repeats
            self._env.close()
            self._env = _make_env(env, self.settings.env_kwargs,
                                  {"frameskip": 1, "repeat_action_probability": 0.0})
        try:
            self._setup()
        except Exception:
            self._env.close()
            raise
        self.supports_state = self._ale is not None
        self._closed = False
        self._raw: np.ndarray | None = None  # last native frame, RGB
        self._frame: np.ndarray | None = None
        self._score = 0.0
        self._prev_action = 0  # the action the last env step executed (what stickiness repeats)
        self._ale_action = 0  # the action of the last ALE frame (what ALE stickiness repeats)
        self._rng = np.random.default_rng()

    def _setup(self) -> None:
        """Check the spaces and derive names, image key, tick rate and state support."""
        obs_space = self._env.observation_space
        self._obs_key = _image_key(obs_space, self.settings.obs_key, self.env_id)
        image_space = obs_space[self._obs_key] if self._obs_key is not None else obs_space
        _check_image_space(image_space, self.env_id)
        self._native_shape = tuple(int(d) for d in image_space.shape)
        action_space = _check_action_space(self._env.action_space, self.env_id)
        self._action_start = int(action_space.start)
        self.action_names = _action_names(self._env, int(action_space.n))
        self.tick_rate, self._tick_source = self._derive_tick_rate()

    def _derive_tick_rate(self) -> tuple[float, str]:
        k = self.settings.frame_skip
        if self._ale is not None:
            inner = self._ale.mean_frames
            return (ALE_FRAME_RATE / inner / k,
                    f"{ALE_FRAME_RATE:g} Atari frames/s / ALE frameskip {inner:g} / frame_skip {k}")
        fps = self._env.metadata.get("render_fps")
        if not fps:
            return DEFAULT_TICK_RATE, "default (the env's metadata has no render_fps)"
        inner = getattr(self._env.unwrapped, "frame_skip", 1)  # ViZDoom: tics per env step
        inner = inner if isinstance(inner, int) and inner > 0 else 1
        return (float(fps) / inner / k, f"render_fps {fps} / env frame_skip {inner} / frame_skip {k}")

    # ------------------------------------------------------------ properties
    @property
    def frame_shape(self) -> tuple[int, int, int]:
        r = self.settings.resolution
        return (r, r, 3)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        env_info: dict[str, Any] = {
            "id": self.env_id,
            "kwargs": _jsonable(self._env.spec.kwargs) if self._env.spec else {},
            "max_episode_steps": self._env.spec.max_episode_steps if self._env.spec else None,
            "native_obs_shape": list(self._native_shape),
            "obs_key": self._obs_key,
        }
        if self._ale is not None:
            fs = self._ale.frameskip
            env_info["ale"] = {
                "frameskip": list(fs) if isinstance(fs, tuple) else fs,
                "repeat_action_probability": self._ale.repeat_action_probability,
                "applied_by": "the adapter, frame by frame as ALE does (the env itself runs with "
                              "frameskip=1, repeat_action_probability=0) so that states are exact",
            }
        d.update(env=env_info, tick_rate_source=self._tick_source,
                 supports_state=self.supports_state, action0_note=self._action0_note())
        return d

    def _action0_note(self) -> str:
        first = self.action_names[0]
        if first == "NOOP":
            return "action 0 is the env's no-op"
        if first == "ACTION_0":
            return ("the env does not name its actions: action 0 (sent when no key is pressed) "
                    "is not known to be a no-op")
        return f"action 0 is the env's {first!r}, not a no-op; it is sent when no key is pressed"

    # ------------------------------------------------------------ actions
    def keymap(self) -> Keymap:
        """The generic gym keymap restricted to this game's actions."""
        return gym_keymap(self.action_names)

    def action_for_pressed(self, pressed: Iterable[str]) -> int:
        """The action combining the most of the pressed inputs (names like UP, FIRE, ATTACK).

        {UP, RIGHT, FIRE} gives UPRIGHTFIRE where the game has it, else the richest action
        made only of pressed inputs (e.g. UPRIGHT), and NOOP when none fits.
        """
        want = {str(p).upper() for p in pressed}
        best, best_len = 0, 0
        for i, name in enumerate(self.action_names):
            parts = action_parts(name)
            if parts and parts <= want and len(parts) > best_len:
                best, best_len = i, len(parts)
        return best

    # ------------------------------------------------------------ API
    def _reset(self, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        self._check_open()
        if seed is not None:
            self._rng = np.random.default_rng([_RNG_SALT, seed])
        obs, info = self._env.reset(seed=seed)
        self._score = 0.0
        self._prev_action = self._ale_action = 0  # ALE's reset releases the joystick too
        frame = self._observe(obs)
        return frame, {**scalar_info(info), "effective_action": 0, "score": 0.0}

    def _step(self, action: int) -> StepResult:
        self._check_open()
        reward, terminated, truncated = 0.0, False, False
        p = self.settings.sticky_actions
        for _ in range(self.settings.frame_skip):
            if p == 0 or self._rng.random() >= p:
                self._prev_action = action
            obs, r, terminated, truncated, info = self._env_step(self._prev_action)
            reward += r
            if terminated or truncated:
                break
        self._score += reward
        max_steps = self.settings.max_steps
        truncated = truncated or (max_steps is not None and self._steps + 1 >= max_steps)
        frame = self._observe(obs)
        info = {**scalar_info(info), "effective_action": action, "score": self._score}
        return StepResult(frame, reward, bool(terminated), bool(truncated), info)

    def _env_step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """One env step; for ALE, its frames one by one with ALE's sticky actions."""
        if self._ale is None:
            obs, r, terminated, truncated, info = self._env.step(self._action_start + action)
            return obs, float(r), terminated, truncated, info
        fs, p = self._ale.frameskip, self._ale.repeat_action_probability
        frames = int(self._rng.integers(fs[0], fs[1])) if isinstance(fs, tuple) else fs
        reward = 0.0
        for _ in range(frames):
            if p == 0 or self._rng.random() >= p:  # as ALE: a sticky frame keeps the old action
                self._ale_action = action
            obs, r, terminated, truncated, info = self._env.step(
                self._action_start + self._ale_action)
            reward += float(r)
            if terminated or truncated:
                break
        return obs, reward, terminated, truncated, info

    def _observe(self, obs: Any) -> np.ndarray:
        image = obs[self._obs_key] if self._obs_key is not None else obs
        self._raw = to_rgb(image)
        self._frame = resize_area(self._raw, self.settings.resolution)
        return self._frame.copy()

    def render(self, size: int | None = None) -> np.ndarray:
        """The env's native frame resized to size x size (the current frame when size is None)."""
        if self._raw is None or self._frame is None:
            raise WorldError(f"world {self.name!r}: call reset() before render()")
        if size is None or size == self.settings.resolution:
            return self._frame.copy()
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise InvalidSettingError(f"render size must be a positive int, got {size!r}")
        return resize_area(self._raw, int(size))

    # ------------------------------------------------------------ state (ALE)
    def get_state(self) -> dict[str, Any]:
        if not self.supports_state:
            return super().get_state()
        if self._raw is None or self._frame is None:
            raise WorldError(f"world {self.name!r}: call reset() before get_state()")
        u = self._env.unwrapped
        return {
            **self._base_state(),
            "env_id": self.env_id,
            "ale": bytes(u.ale.cloneState(include_rng=True).serialize()),
            "env_rng": u.np_random.bit_generator.state,
            "time_limits": [int(w._elapsed_steps or 0) for w in _time_limits(self._env)],
            "raw": self._raw.copy(),
            "frame": self._frame.copy(),
            "score": self._score,
            "prev_action": self._prev_action,
            "ale_action": self._ale_action,
            "rng": self._rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if not self.supports_state:
            return super().set_state(state)
        self._check_open()
        if state.get("env_id") != self.env_id:
            raise InvalidSettingError(
                f"state is from env {state.get('env_id')!r}, this world wraps {self.env_id!r}"
            )
        import ale_py  # importable: only ALE envs support state

        if self._raw is None:  # the env's wrappers insist on a reset before the first step
            self._env.reset()
        u = self._env.unwrapped
        u.ale.restoreState(ale_py.ALEState(state["ale"]))
        u.np_random.bit_generator.state = state["env_rng"]
        for wrapper, elapsed in zip(_time_limits(self._env), state["time_limits"], strict=True):
            wrapper._elapsed_steps = int(elapsed)
        self._restore_base_state(state)
        self._raw = np.array(state["raw"], dtype=np.uint8)
        self._frame = np.array(state["frame"], dtype=np.uint8)
        self._score = float(state["score"])
        self._prev_action = int(state["prev_action"])
        self._ale_action = int(state["ale_action"])
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = state["rng"]

    # ------------------------------------------------------------ lifetime
    def _check_open(self) -> None:
        if self._closed:
            raise WorldError(f"world {self.name!r} is closed")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()
