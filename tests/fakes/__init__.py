"""Loopback fakes of the chat platforms' APIs, written from their docs, for tests."""
