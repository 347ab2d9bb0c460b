-- Each device's last-seen time: stamped when it registers, logs in or
-- writes, and by the nodes for the devices connected to them. At the device
-- limit a new device retires the least recently seen one; NULL (devices
-- from before this column) counts as the oldest.
ALTER TABLE kronos_devices ADD COLUMN last_seen timestamptz;
