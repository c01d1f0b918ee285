"""One run's life: where its tools come from, its log in the store, and its result, all
built from the core's event stream."""
