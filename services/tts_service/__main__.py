from vagent.services.tts_service.service import main

main()
