"""The recipe format: loading YAML with source positions, and the typed schema it validates into."""

# distributed.world_size where the launcher is told the number of GPUs (torchrun --nproc-per-node, accelerate,
# SLURM) and the recipe does not say it: the sharding is checked without a world size, and RC111 says so. A
# translated config without a GPU count holds it (checks/formats), so the recipe `convert` writes holds it too;
# a DeepSpeed or accelerate file that states the number replaces it (recipe.distributed_files).
LAUNCHER = "launcher"
