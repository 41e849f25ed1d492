"""The paper's training experiments."""
