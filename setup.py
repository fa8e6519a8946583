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
        "cuda12": ["cupy-cuda12x>=13"],
        "cuda13": ["cupy-cuda13x>=13"],
        "plot": ["matplotlib>=3.5"],
        "test": ["pytest>=7", "matplotlib>=3.5"],
    },
    license="MIT",
)
