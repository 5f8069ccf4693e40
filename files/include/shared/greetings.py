def greeting(name: str) -> str:
    """A friendly line, used by the example and smoke DAGs to prove the import works."""
    return f"hello, {name}, from shared"
