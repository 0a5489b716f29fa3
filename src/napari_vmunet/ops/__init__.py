"""The model's operators, each beside its plain-PyTorch form: the selective scan (:mod:`.scan`,
one function over several backends), LayerNorm with its gate (:mod:`.norm`), SS2D's depthwise
convolution + SiLU (:mod:`.conv`) and the float32-writing products (:mod:`.linear`).

Which runs where is one rule (:mod:`.gate`): our Triton kernels on a CUDA tensor of a GPU of
compute capability 7.0 or newer when triton imports; PyTorch elsewhere, and everywhere under
``NAPARI_VMUNET_SCAN=reference``. Triton autotuning choices stay on disk (:mod:`.autotune`).
"""
