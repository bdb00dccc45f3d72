"""The Keras idiom for CNN+LSTM video features, timed: TimeDistributed(ResNet50(include_top=False,
pooling='avg')) + LSTM under tf.function, fp32, random weights (no download). Prints one JSON line.

Runs in its own interpreter with TensorFlow installed (seqvision does not depend on it):
    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu
    /tmp/tfvenv/bin/python benchmarks/keras_baseline.py [--quick]
Input frames are preloaded arrays, so decoding is NOT counted: the comparison favours Keras.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size, frames, batch, seconds = (64, 4, 2, 1.0) if args.quick else (224, 16, 4, 20.0)
    inputs = tf.keras.Input((frames, size, size, 3))
    cnn = tf.keras.applications.ResNet50(include_top=False, pooling="avg", weights=None, input_shape=(size, size, 3))
    x = tf.keras.layers.TimeDistributed(cnn)(inputs)
    x = tf.keras.layers.LSTM(256)(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(x))

    @tf.function
    def forward(clips):
        return model(clips, training=False)

    clips = tf.constant(np.random.default_rng(0).random((batch, frames, size, size, 3), dtype=np.float32))
    forward(clips)  # trace + warm-up
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        forward(clips).numpy()
        images += batch * frames
    print(json.dumps({"keras_images_per_s": images / (time.perf_counter() - start), "tensorflow": tf.__version__}))


if __name__ == "__main__":
    main()
