"""The admin API and the admin web page (its assets ship in ui/)."""
