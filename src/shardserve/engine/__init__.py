"""The inference engine: schedule -> execute -> update, one step at a time."""
