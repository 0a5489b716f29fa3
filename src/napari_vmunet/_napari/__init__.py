"""napari contributions: the Segment and Fine-tune widgets, reader, writer, sample data. Qt
only through qtpy, torch only inside the functions that need it: napari imports these modules
at start-up."""
