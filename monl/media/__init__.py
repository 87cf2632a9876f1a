"""Video files with sound, through PyAV (FFmpeg ships in its wheel; no system ffmpeg is needed).

  read_clips(path, fps=, sample_rate=, size=, clip_seconds=)  -> Clip(video uint8 [T, size, size, 3],
                                                                 audio float32 [S], source_id)
  probe(path)                                                  -> MediaInfo (duration, fps, size, audio)
  write_mp4(path, video [T, H, W, 3], audio [S], fps=, sample_rate=)   H.264 + AAC
  side_by_side([video, ...], gap=2)                            panels left to right

Bad files raise `MediaError` naming the file and the reason. `python -m monl.media FILE...` prints
what `probe` sees. `av` is imported only when a file is opened, so the rest of monl works without it.
"""
from monl.media.frames import side_by_side, upscale_nearest
from monl.media.info import MediaInfo, probe
from monl.media.reader import Clip, read_clips
from monl.media.source import MediaError, require_av
from monl.media.writer import write_mp4

__all__ = ["Clip", "MediaError", "MediaInfo", "probe", "read_clips", "require_av", "side_by_side",
           "upscale_nearest", "write_mp4"]
