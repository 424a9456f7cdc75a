//! Sans-IO STUN/TURN core (see the relay issue).
