"""The recorder: takes events from the client, makes them durable, stores them in the background."""
