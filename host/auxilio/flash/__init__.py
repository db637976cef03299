"""Flashing and setting up boards: images, ports, esptool flashing, deploy and the factory test."""
