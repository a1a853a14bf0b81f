// placeholder until the relay is written
