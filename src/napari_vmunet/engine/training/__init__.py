"""Training, split by job: :mod:`.settings` (no torch), :mod:`.data` (slices on the model's
grid, the validation split), :mod:`.losses`, :mod:`.trainer` (the loop shared by fine-tuning and
data-set training) and :mod:`.finetuner` (a user's corrected slices). The events they yield
are in :mod:`napari_vmunet.engine.events`. Import from the modules; this package imports
nothing, so that reading the settings stays free of torch.
"""
