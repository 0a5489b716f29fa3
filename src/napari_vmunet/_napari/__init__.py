"""napari contributions (reader, writer, sample data; widgets to come). Qt only through qtpy,
torch only inside the functions that need it: napari imports these modules at start-up."""
