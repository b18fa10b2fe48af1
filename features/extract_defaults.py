"""`dae extract`'s defaults, each written once and torch-free: the extraction library's signatures
(`dae.features.extract`, `.decode`, `.decode_pool`), the command line's options (`dae extract`, `dae bench extract`,
`dae bench decode`) and `dae predict` (for runs whose features predate a recorded decoder) read them from here."""

DEFAULT_PROTOCOL = "uniform:10x16"  # the clip protocol (dae.features.clips): 10 clips of 16 frames over the video
DEFAULT_DECODER = "decord"  # one of dae.features.decode.DECODERS
VIDEO_TIMEOUT_S = 1800.0  # seconds one video may take to decode before its decoder is stopped and the video failed
DECODE_THREADS = 1  # decoder threads per decoding process
