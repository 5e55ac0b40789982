# Simulate the GPU machine's Python: these packages are NOT installed there.
import sys
BLOCKED = {"rdkit", "Bio", "gymnasium", "gym_pusht", "zarr", "pydssp", "posebusters", "pymunk", "pygame", "diffusers", "shapely", "imageio"}
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named '{name}' (blocked: not on the GPU machine)")
        return None
sys.meta_path.insert(0, _Block())
