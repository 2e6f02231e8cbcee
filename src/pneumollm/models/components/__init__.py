"""Plain nn.Module building blocks (no Lightning), each unit-tested on its own."""
