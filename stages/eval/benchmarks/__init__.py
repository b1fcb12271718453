"""The built-in benchmarks, each reading its published layout from a local folder. The runner looks them up here:

    bench = PUBLISHED["cv-bench"](Path("data/CV-Bench"))
"""

from ..benchmark import Benchmark
from .cv_bench import CVBench
from .embspatial_bench import EmbSpatialBench
from .mmsi_bench import MMSIBench
from .roborefit import RoboRefIt
from .robospatial_home import RoboSpatialHome
from .vsi_bench import VSIBench
from .where2place import Where2Place

PUBLISHED: dict[str, type[Benchmark]] = {
    b.name: b for b in (VSIBench, CVBench, MMSIBench, EmbSpatialBench, RoboSpatialHome, Where2Place, RoboRefIt)
}
