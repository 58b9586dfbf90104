"""The web app (contract section 7): server-rendered pages over the same store as the API."""
