"""The shared core of the suite: what pretraining, detection, reporting and the demo all rely on.

It imports none of them (tests/test_layout.py holds the map of allowed imports; docs/development.md draws it):

- errors:          UserError and the one-line command-line error wrapper
- io:              atomic writes and safe (weights_only) checkpoint loading
- seeding:         keyed per-step seeds and the global RNG state of a resume
- distributed:     process-group facts (torchrun/DDP) and device resolution
- events:          a run's metrics log (JSON lines + TensorBoard), cut back to the resume point on restart
- config:          helpers for yacs/fvcore configs (dotted keys, overrides, hashing)
- records:         writing record.json (stable JSON, its date, run ids, code version, peak memory)
- schemas:         the record schema of every run kind (pretrain, knn, linear, detection) and its validator
- resnets:         the ResNet architectures by name (torchvision's and the CPU-sized resnet_tiny) and their builder
- resnet_weights:  ResNet tensor names (torchvision <-> detectron2) and checkpoint layout detection
- d2_pkl:          detectron2's weights pickle, written atomically and read without running code
- idx:             the MNIST family's IDX files (Fashion-MNIST)
- precise_bn:      BatchNorm running statistics recomputed as a true average over batches
- cli:             argparse value types shared by the command-line tools
"""
