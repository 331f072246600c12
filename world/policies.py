"""Policies that play a World: what the recorder records and what the play window can run.

A policy is an object with ``reset(seed)`` (start an episode; all randomness comes from
that seed, so a recording resumed at episode i equals an uninterrupted one),
``act(frame, info) -> int`` (the action for the current frame and info) and
``describe() -> dict`` (name and parameters, JSON-able, for dataset metadata).

- ``random``: uniform random actions.
- ``explorer``: the scripted explorer, the default for datasets. A world model learns only
  what the data shows, so it aims for action-balanced, wide coverage: it holds an action for
  a random (geometric) number of steps, inserts deliberate NOOP segments, and picks each
  next action favouring (a) actions it used less, (b) directions that lead to less-visited
  cells, found by simulating each candidate from a state snapshot and restoring it (worlds
  with exact ``get_state``/``set_state``), (c) actions that are not blocked (their
  effective action is not NOOP); it mostly avoids actions that end the episode. Worlds
  without state support get the same walk without the look-ahead.
- ``agent``: a callable ``(frame, info) -> action`` or a stable-baselines3 model file.
- ``human``: only inside the play window (``play.py``, record key).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from world.core import World, WorldError


class PolicyError(WorldError, ValueError):
    """Unknown policy, bad policy parameters, or a policy that cannot run here."""


class Policy(Protocol):
    def reset(self, seed: int) -> None: ...

    def act(self, frame: np.ndarray, info: dict[str, Any]) -> int: ...

    def describe(self) -> dict[str, Any]: ...


# ---------------------------------------------------------------------- random
class RandomPolicy:
    """Uniform random actions, seeded per episode."""

    name = "random"

    def __init__(self, world: World, seed: int = 0) -> None:
        self.num_actions = world.num_actions
        self.reset(seed)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def act(self, frame: np.ndarray, info: dict[str, Any]) -> int:
        return int(self._rng.integers(self.num_actions))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": {}}


# ---------------------------------------------------------------------- explorer
class ExplorerPolicy:
    """Scripted explorer: action-balanced, coverage-seeking, look-ahead where state allows.

    Args:
        mean_hold: mean number of steps an action is held (geometric distribution).
        noop_share: probability that a new segment is a deliberate NOOP segment.
        horizon: look-ahead steps per candidate (at least; a longer planned hold is
            simulated in full, up to ``2 * horizon``).
        novelty_weight: weight of the share of look-ahead steps in rarely visited cells.
        balance_weight: weight of an action's deficit against an equal share of moves.
        blocked_weight: penalty for a candidate whose moves come back NOOP (blocked).
        end_penalty: penalty for a candidate whose look-ahead ends the episode (finite,
            so that terminations still appear in the data now and then).
        temperature: softmax temperature of the choice among the scored candidates.
        lookahead: use get_state/set_state look-ahead when the world supports it.
        retrace: probability that a new segment walks the last ``retrace_len`` moves back, each
            replaced by its opposite (UP/DOWN, LEFT/RIGHT, FORWARD/BACKWARD, TURN_LEFT/TURN_RIGHT):
            the recording then holds returns to places that left the view (0: never, the default).
        retrace_len: how many of the latest moves a retrace walks back (at most).
        still_weight: weight of the share of look-ahead steps where the player's sprite moves on
            the screen (``info["player_pos"]`` changes), which a camera that follows the player shows
            only where the view stands still: at the map's edges. Such transitions show a move by the
            sprite alone, and a world model needs them to read the keys there (0: off, the default).
    """

    name = "explorer"

    def __init__(self, world: World, seed: int = 0, mean_hold: float = 4.0,
                 noop_share: float = 0.15, horizon: int = 4, novelty_weight: float = 8.0,
                 balance_weight: float = 1.0, blocked_weight: float = 3.0,
                 end_penalty: float = 4.0, temperature: float = 0.5,
                 lookahead: bool = True, retrace: float = 0.0, retrace_len: int = 16,
                 still_weight: float = 0.0) -> None:
        if world.num_actions < 2:
            raise PolicyError(f"the explorer needs at least one action besides NOOP; "
                              f"world {world.name!r} has {list(world.action_names)}")
        checks = [(mean_hold >= 1, f"mean_hold must be >= 1, got {mean_hold}"),
                  (0 <= noop_share < 1, f"noop_share must be in [0, 1), got {noop_share}"),
                  (horizon >= 1, f"horizon must be >= 1, got {horizon}"),
                  (temperature > 0, f"temperature must be > 0, got {temperature}"),
                  (0 <= retrace <= 1, f"retrace must be in [0, 1], got {retrace}"),
                  (retrace_len >= 1, f"retrace_len must be >= 1, got {retrace_len}"),
                  (still_weight >= 0, f"still_weight must be >= 0, got {still_weight}")]
        for ok, msg in checks:
            if not ok:
                raise PolicyError(f"explorer: {msg}")
        self.world = world
        self.params = {"mean_hold": float(mean_hold), "noop_share": float(noop_share),
                       "horizon": int(horizon), "novelty_weight": float(novelty_weight),
                       "balance_weight": float(balance_weight),
                       "blocked_weight": float(blocked_weight), "end_penalty": float(end_penalty),
                       "temperature": float(temperature),
                       "lookahead": bool(lookahead and world.supports_state)}
        if retrace > 0:  # only then in the description (earlier recordings resume unchanged)
            self.params.update(retrace=float(retrace), retrace_len=int(retrace_len))
        if still_weight > 0:
            if not lookahead or not world.supports_state:
                raise PolicyError(f"explorer: still_weight needs the look-ahead (lookahead=True and a world with "
                                  f"get_state/set_state); world {world.name!r} has supports_state="
                                  f"{world.supports_state}, lookahead={lookahead}")
            self.params["still_weight"] = float(still_weight)
        names = list(world.action_names)
        pairs = [("UP", "DOWN"), ("LEFT", "RIGHT"), ("FORWARD", "BACKWARD"), ("TURN_LEFT", "TURN_RIGHT")]
        self._opposite = {names.index(a): names.index(b) for x, y in pairs for a, b in ((x, y), (y, x))
                          if a in names and b in names}
        if retrace > 0 and not self._opposite:
            raise PolicyError(f"explorer: retrace needs opposite moves (UP/DOWN, LEFT/RIGHT, ...); world "
                              f"{world.name!r} has {names}")
        self.moves = np.arange(1, world.num_actions)
        self.reset(seed)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._pressed = np.zeros(self.world.num_actions, np.int64)
        self._blocked = np.zeros(self.world.num_actions)  # recent blocked rate per action
        self._visits: Counter[Hashable] = Counter()
        self._action, self._hold, self._stuck = 0, 0, 0
        self._path: list[int] = []      # the latest effective moves, for a retrace
        self._back: list[int] = []      # the moves of a retrace still to make
        self._pos: Any = None           # the player's latest position on the screen, if the world says

    def act(self, frame: np.ndarray, info: dict[str, Any]) -> int:
        self._observe(info)
        if self._back:
            self._action = self._back.pop(0)
        else:
            if self._hold <= 0 or self._stuck >= 2:
                self._action, self._hold = self._next_segment()
                self._stuck = 0
                if self._back:
                    self._action = self._back.pop(0)
            self._hold -= 1
        self._pressed[self._action] += 1
        return self._action

    # -------------------------------------------------------------- internals
    def _observe(self, info: dict[str, Any]) -> None:
        """Count the visit of the current cell; track whether the held action is blocked."""
        cell = info.get("cell")
        if cell is not None:
            self._visits[cell] += 1
        self._pos = info.get("player_pos")
        if self.params.get("retrace") and info.get("step", 0) > 0:
            eff = int(info.get("effective_action", self._action))
            if eff in self._opposite:
                self._path = (self._path + [eff])[-int(self.params["retrace_len"]):]
        if info.get("step", 0) > 0 and self._action != 0:
            blocked = info.get("effective_action", self._action) == 0
            self._blocked[self._action] = 0.6 * self._blocked[self._action] + 0.4 * blocked
            self._stuck = self._stuck + 1 if blocked else 0

    def _next_segment(self) -> tuple[int, int]:
        p = self.params
        if p.get("retrace") and len(self._path) >= 2 and self._rng.random() < p["retrace"]:
            self._back = [self._opposite[a] for a in reversed(self._path)]  # walk the way back
            self._path = []
            return self._back[0], 0
        hold = int(min(self._rng.geometric(1.0 / p["mean_hold"]), 4 * p["mean_hold"]))
        if self._rng.random() < p["noop_share"]:
            return 0, hold
        scores = self._balance_scores()
        if p["lookahead"]:
            scores += self._lookahead_scores(max(hold, p["horizon"]))
        else:
            scores -= p["blocked_weight"] * self._blocked[self.moves]
        z = (scores - scores.max()) / p["temperature"]
        probs = np.exp(z) / np.exp(z).sum()
        return int(self._rng.choice(self.moves, p=probs)), hold

    def _balance_scores(self) -> np.ndarray:
        """Positive for moves used less than an equal share of the moves so far."""
        used = self._pressed[self.moves].astype(float)
        share = used / max(used.sum(), 1.0)
        deficit = 1.0 / len(self.moves) - share
        return self.params["balance_weight"] * len(self.moves) * deficit

    def _lookahead_scores(self, steps: int) -> np.ndarray:
        """Simulate holding each move for ``steps`` steps from a snapshot; score novelty."""
        p, world = self.params, self.world
        steps = min(steps, 2 * p["horizon"])
        snapshot = world.get_state()
        scores = np.zeros(len(self.moves))
        for k, a in enumerate(self.moves):
            novelty, blocked, ended, on_screen, pos = 0.0, 0, False, 0, self._pos
            for _ in range(steps):
                res = world.step(int(a))
                cell = res.info.get("cell")
                if cell is not None:
                    novelty += 1.0 / (1.0 + self._visits[cell])
                blocked += res.info.get("effective_action", a) == 0
                new_pos = res.info.get("player_pos")
                on_screen += pos is not None and new_pos is not None and tuple(new_pos) != tuple(pos)
                pos = new_pos
                if res.terminated or res.truncated:
                    ended = res.terminated
                    break
            world.set_state(snapshot)
            scores[k] = (p["novelty_weight"] * novelty / steps
                         - p["blocked_weight"] * blocked / steps - p["end_penalty"] * ended
                         + p.get("still_weight", 0.0) * on_screen / steps)
        return scores


# ---------------------------------------------------------------------- agent
class AgentPolicy:
    """A trained agent: a callable ``(frame, info) -> action`` or a stable-baselines3 model file.

    Args:
        agent: the callable, or a path to an SB3 ``.zip`` model.
        algo: the SB3 algorithm class name for a path ("PPO", "DQN", "A2C", ...); "auto"
            tries the common ones.
        deterministic: SB3 ``predict(deterministic=...)``.
    """

    name = "agent"
    SB3_ALGOS = ("PPO", "DQN", "A2C", "QRDQN")

    def __init__(self, world: World, seed: int = 0, agent: str | Path | Callable[..., Any] | None = None,
                 algo: str = "auto", deterministic: bool = True) -> None:
        if agent is None:
            raise PolicyError("the agent policy needs an agent: pass --agent PATH (a "
                              "stable-baselines3 .zip) or agent=<callable (frame, info) -> action>")
        self.world = world
        self.deterministic = deterministic
        self._source = agent if isinstance(agent, (str, Path)) else getattr(agent, "__name__", repr(agent))
        self._fn = self._load(agent, algo) if isinstance(agent, (str, Path)) else agent
        self.reset(seed)

    def _load(self, path: str | Path, algo: str) -> Callable[..., Any]:
        path = Path(path)
        if not path.is_file():
            raise PolicyError(f"agent model {str(path)!r} not found; pass the path of a "
                              f"stable-baselines3 .zip file")
        try:
            import stable_baselines3 as sb3
        except ImportError as e:
            raise PolicyError("loading an agent model needs stable-baselines3: "
                              "pip install stable-baselines3") from e
        names = self.SB3_ALGOS if algo == "auto" else (algo,)
        errors = []
        for name in names:
            cls = getattr(sb3, name, None)
            if cls is None:
                errors.append(f"{name}: not in stable_baselines3")
                continue
            try:
                model = cls.load(str(path), device="cpu")
                break
            except Exception as e:  # noqa: BLE001 - try the next algorithm, report all
                errors.append(f"{name}: {e}")
        else:
            raise PolicyError(f"could not load agent {str(path)!r} as {list(names)}: " + "; ".join(errors))
        self.algo = type(model).__name__

        def predict(frame: np.ndarray, info: dict[str, Any]) -> int:
            action, _ = model.predict(frame, deterministic=self.deterministic)
            return int(np.asarray(action).reshape(-1)[0])

        return predict

    def reset(self, seed: int) -> None:
        if hasattr(self._fn, "reset"):  # a stateful callable agent starts its episode too
            self._fn.reset(seed)

    def act(self, frame: np.ndarray, info: dict[str, Any]) -> int:
        return self.world.action_index(int(self._fn(frame, info)))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": {"agent": str(self._source),
                                              "algo": getattr(self, "algo", None),
                                              "deterministic": self.deterministic}}


# ---------------------------------------------------------------------- registry
POLICIES: dict[str, type] = {"random": RandomPolicy, "explorer": ExplorerPolicy, "agent": AgentPolicy}
ALL_POLICIES = (*POLICIES, "human")


def make_policy(name: str, world: World, seed: int = 0, **kw: Any) -> Policy:
    """Create a policy by name for ``world`` (see the module docstring for the names)."""
    if name == "human":
        raise PolicyError("the human policy needs the play window: run `python play.py --world "
                          f"{world.name}` and press its record key to record your own play")
    if name not in POLICIES:
        raise PolicyError(f"unknown policy {name!r}; valid policies: {list(ALL_POLICIES)}")
    try:
        return POLICIES[name](world, seed, **kw)
    except TypeError as e:
        raise PolicyError(f"bad parameters {sorted(kw)} for policy {name!r}: {e}") from e
