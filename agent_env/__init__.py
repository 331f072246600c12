"""Gymnasium environments over any dreamstep World.

Importing this package registers ``dreamstep/Adventure-v0``, ``dreamstep/Maze3D-v0`` and
the generic ``dreamstep/World-v0``:

>>> import gymnasium as gym
>>> import agent_env
>>> env = gym.make("dreamstep/Adventure-v0", render_mode="rgb_array")
>>> envs = gym.make_vec("dreamstep/Adventure-v0", num_envs=4, vectorization_mode="async")
>>> env = agent_env.make_env("gym:ALE/Breakout-v5")
>>> env = gym.make("dreamstep/AdventureDream-v0")           # the dream of the shipped model
>>> envs = gym.make_vec("dreamstep/AdventureDream-v0", num_envs=64, vectorization_mode="vector_entry_point")
"""

from agent_env.dream_vec import DreamVectorEnv, make_dream_vector_env
from agent_env.env import (
    DEFAULT_MAX_EPISODE_STEPS,
    DREAM_ENV_ID,
    NAMESPACE,
    WORLD_ENV_ID,
    NoDisplayError,
    WorldEnv,
    env_id_for,
    make_dream_env,
    make_env,
    register_builtin_envs,
    register_world,
    registered_env_ids,
)

register_builtin_envs()

__all__ = [
    "WorldEnv", "NoDisplayError", "make_env", "register_world", "register_builtin_envs", "registered_env_ids",
    "env_id_for", "NAMESPACE", "WORLD_ENV_ID", "DEFAULT_MAX_EPISODE_STEPS",
    "DREAM_ENV_ID", "make_dream_env", "DreamVectorEnv", "make_dream_vector_env",
]
