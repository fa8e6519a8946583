from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="gradflow",
    version="0.1.0",
    description="A small define-by-run autodiff framework on CuPy with a NumPy fallback",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["gradflow", "gradflow.*"]) + ["gradflow.kernels"],
    package_dir={"gradflow.kernels": "kernels"},
    package_data={"gradflow.kernels": ["*.cu", "*.cuh"]},
    install_requires=["numpy>=1.24", "tqdm>=4.60"],
    extras_require={
        # [ctk] brings NVRTC and the CUDA headers as wheels: CuPy compiles every kernel at
        # run time and needs them on a machine without a CUDA toolkit.
        "cuda12": ["cupy-cuda12x[ctk]>=13"],
        "cuda13": ["cupy-cuda13x[ctk]>=13"],
        # multi-GPU training (gradflow.distributed backend="nccl"): MPI for launching, NCCL for the GPUs
        "nccl12": ["cupy-cuda12x[ctk]>=13", "nvidia-nccl-cu12>=2.18", "mpi4py>=4", "mpich>=4"],
        "nccl13": ["cupy-cuda13x[ctk]>=13", "nvidia-nccl-cu13>=2.27.7,<3", "mpi4py>=4", "mpich>=4"],
        "plot": ["matplotlib>=3.5"],
        "distributed": ["mpi4py>=4", "mpich>=4"],
        "interop": ["safetensors>=0.4", "ml_dtypes>=0.4"],
        # Everything the test suite uses, so the README's test command is complete on a new
        # machine: PyTorch (CPU build, pinned) is the reference oracle; CuPy 14.2 with the
        # NVRTC and runtime-header wheels compiles every kernel exactly as CuPy would on a
        # GPU (no GPU needed); MPICH + mpi4py run the two-process distributed tests.
        "test": ["pytest>=7", "matplotlib>=3.5", "torch==2.13.0",
                 "cupy-cuda13x==14.2.0", "nvidia-cuda-nvrtc==13.*", "nvidia-cuda-runtime==13.*",
                 "mpi4py>=4", "mpich>=4", "safetensors>=0.4", "ml_dtypes>=0.4"],
    },
    license="MIT",
)
