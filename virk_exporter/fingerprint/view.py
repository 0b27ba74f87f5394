"""The size of the small gray view every property and geometry measurement works on; its own
module so that properties.py and geometry.py both import it without importing each other."""

SMALL = (160, 120)  # (width, height) for cv2
