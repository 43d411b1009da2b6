"""Drivers for sensors that stream frames over their own serial port: SDS011, PMS5003, NMEA GPS, pedestrian counter."""
