"""The tutoring marketplace: availability, booking rules, search, calendar, notifications."""
