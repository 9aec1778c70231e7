"""The paper's experiments, one module per protocol (prompt + window + trials + grading + metrics)."""
