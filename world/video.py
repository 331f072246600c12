"""Write frame sequences to mp4 (H.264 via the ffmpeg binary that imageio-ffmpeg ships)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


class VideoError(RuntimeError):
    pass


def upscale_nearest(frame: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscale of an (H, W, 3) frame by an integer factor (sharp pixels)."""
    if scale == 1:
        return frame
    return np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: float = 15.0,
              scale: int = 1, crf: int = 12) -> int:
    """Write RGB uint8 frames (all the same shape) to an mp4 file; returns the frame count.

    ``scale`` upscales each frame by pixel repetition first (small game frames stay sharp);
    ``crf`` is x264's quality (0 lossless, 12 visually lossless, 23 default).
    """
    import imageio_ffmpeg

    if not isinstance(scale, int) or scale < 1:
        raise VideoError(f"scale must be a positive int, got {scale!r}")
    if fps <= 0:
        raise VideoError(f"fps must be > 0, got {fps!r}")
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise VideoError(f"output file must end in .mp4, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    count, shape = 0, None
    try:
        for frame in frames:
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise VideoError(f"frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
            if shape is None:
                shape = frame.shape
                h, w = shape[0] * scale, shape[1] * scale
                writer = imageio_ffmpeg.write_frames(
                    str(path), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                    pix_fmt_out="yuv420p", macro_block_size=2, quality=None,
                    output_params=["-crf", str(crf)], ffmpeg_log_level="error")
                writer.send(None)  # start ffmpeg
            elif frame.shape != shape:
                raise VideoError(f"frame {count} has shape {frame.shape}, the first had {shape}")
            writer.send(np.ascontiguousarray(upscale_nearest(frame, scale)))
            count += 1
    finally:
        if writer is not None:
            writer.close()
    if count == 0:
        raise VideoError("no frames to write")
    return count
