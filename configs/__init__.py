"""The YAML configs, shipped as package data so that an installed ``noisy-train`` finds them:
``noisy-train fit --config configs/quick.yaml`` reads this folder's file when the working
directory has no ``configs/quick.yaml`` of its own (``train.packaged_config``)."""
