"""Node types: one module per type, registered by name in the ``avatar.nodes`` entry-point group."""
