"""ament_python package; outside ROS it installs with pip into a virtual environment."""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "deltaworld_ros"


def model_data_files() -> list[tuple[str, list[str]]]:
    """Every folder under models/ (manifest, weights/, onnx/...) installs under share/<pkg>/."""
    entries = []
    for folder in sorted({p.parent for p in Path("models").rglob("*") if p.is_file()}):
        files = sorted(str(f) for f in folder.iterdir() if f.is_file())
        entries.append((f"share/{PACKAGE}/{folder.as_posix()}", files))
    return entries


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        *model_data_files(),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="deltaworld_ros developers",
    maintainer_email="dev@deltaworld.invalid",
    description="Generative forecasting of camera futures with delta tokens.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "forecast_node = deltaworld_ros.ros.node:main",
            "managed_forecast_node = deltaworld_ros.ros.managed_node:main",
            "deltaworld = deltaworld_ros.cli:main",
        ],
    },
)
