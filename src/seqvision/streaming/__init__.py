"""Streaming: a model fed one frame at a time (a video, a camera, a network stream, a folder that receives images).

One CNN forward per frame; the temporal head carries its state, keeps a running statistic or runs on a
sliding window of kept features (:mod:`.state`). :class:`Stream` is the Python face, ``seqvision stream``
(:func:`.run.run_stream`) the command's.
"""
