"""Write frame sequences to mp4 (H.264 via the ffmpeg binary that imageio-ffmpeg ships)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from world.io import write_failure


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

    The video is written to a temporary file beside ``path``, checked (ffmpeg's exit, an index
    that players need), and only then renamed over ``path``: a full disk, a killed process or a
    failed encode raises :class:`VideoError` and leaves any earlier file at ``path`` as it was.
    """
    import imageio_ffmpeg

    if not isinstance(scale, int) or scale < 1:
        raise VideoError(f"scale must be a positive int, got {scale!r}")
    if fps <= 0:
        raise VideoError(f"fps must be > 0, got {fps!r}")
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise VideoError(f"output file must end in .mp4, got {str(path)!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VideoError(f"cannot create the folder {str(path.parent)!r} for the video: {e.strerror or e}; "
                         f"choose another --out") from e
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    writer = None
    count, shape = 0, None
    done = False

    def io(fn, *args):  # the writer's and the file system's errors only (not the caller's frames')
        try:
            return fn(*args)
        except (OSError, RuntimeError) as e:
            raise VideoError(_why(e, path)) from e

    try:
        for frame in frames:
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise VideoError(f"frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
            if shape is None:
                shape = frame.shape
                h, w = shape[0] * scale, shape[1] * scale
                writer = imageio_ffmpeg.write_frames(
                    str(tmp), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                    pix_fmt_out="yuv420p", macro_block_size=2, quality=None,
                    output_params=["-crf", str(crf)], ffmpeg_log_level="error")
                io(writer.send, None)  # start ffmpeg
            elif frame.shape != shape:
                raise VideoError(f"frame {count} has shape {frame.shape}, the first had {shape}")
            io(writer.send, np.ascontiguousarray(upscale_nearest(frame, scale)))
            count += 1
        if count == 0:
            raise VideoError("no frames to write")
        io(writer.close)  # waits for ffmpeg; raises if it failed
        writer = None
        _check_playable(tmp, path)
        io(os.replace, tmp, path)
        done = True
    finally:
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - already failing: the first error is the one reported
                pass
        if not done:
            tmp.unlink(missing_ok=True)
    return count


def _why(e: BaseException, path: Path) -> str:
    """A one-line reason for a failed video write that names the file and what to do."""
    kind, reason = write_failure(e, path.parent)
    if kind == "full":
        return f"could not write the video {str(path)!r}: {reason}; free some space or choose another --out " \
               f"(any earlier file there is unchanged)"
    if kind == "denied":
        return f"could not write the video {str(path)!r}: {reason}; choose a writable --out"
    return f"could not write the video {str(path)!r}: {reason} (any earlier file there is unchanged)"


def _check_playable(tmp: Path, path: Path) -> None:
    """An mp4 that players can open has its index (the ``moov`` box); a truncated write has not."""
    try:
        data = tmp.read_bytes()
    except OSError as e:
        raise VideoError(_why(e, path)) from e
    if len(data) < 8 or b"moov" not in data:
        raise VideoError(_why(OSError(f"ffmpeg wrote an unplayable file ({len(data)} bytes, no index)"), path))
