"""Tests of the Matter OTA Provider node (adapters/matter); a package so siblings import as `.netns`."""
