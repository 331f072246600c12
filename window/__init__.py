"""The play window: a Pygame/ModernGL application over any :class:`world.core.World` (a real game or
the dream), with keyboard/gamepad input, a HUD, recording and video export (:mod:`window.app`)."""
