"""Generation engines behind one protocol (:mod:`app.engine.base`)."""
